from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, get_type_hints

import cbor2
import pytest
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from ledger import events
from ledger.errors import LedgerCorrupted

RULES = events.RetentionRules(
    keep_last=3,
    keep_hourly=None,
    keep_daily=7,
    keep_weekly=None,
    keep_monthly=None,
    keep_yearly=None,
    keep_within="30d",
    tz="Europe/Berlin",
)
TAG = events.MirrorTag("root", "backup-2", "ef" * 32, 0, "34" * 32)
SAMPLES: dict[type[events.Event], events.Event] = {
    events.LedgerOpened: events.LedgerOpened(
        at_ms=1_767_225_600_000,
        deployment="site-a",
        contract="0x" + "ab" * 20,
        chain_id=131_277_322_940_537,
    ),
    events.VmRegistered: events.VmRegistered(
        at_ms=1_767_225_601_000,
        vm="web-1",
        vm_type="kvm",
        ip="10.0.0.5",
        disks=(
            events.Disk(role="system", resource_id="root", size=20 << 30),
            events.Disk(role="data", resource_id="srv", size=512),
        ),
    ),
    events.DiskPlaced: events.DiskPlaced(
        at_ms=1_767_225_602_000, vm="web-1", resource_id="root", node="business-1", chunk_size=65536
    ),
    events.SnapshotRequested: events.SnapshotRequested(
        at_ms=1_767_225_603_000, snapshot="ab" * 32, vm="web-1", disks=("root",), parent=None
    ),
    events.InitialSnapshotTaken: events.InitialSnapshotTaken(
        at_ms=1_767_225_603_100, snapshot="ab" * 32, vm="web-1", generations=(3,)
    ),
    events.TargetProcessed: events.TargetProcessed(
        at_ms=1_767_225_604_000,
        snapshot="ab" * 32,
        vm="web-1",
        node="transfer-1",
        disks=(
            events.SnapshotDisk(
                resource_id="root",
                manifest="cd" * 32,
                root="ef" * 32,
                size=1 << 30,
                chunk_size=65536,
                chunks=100,
                changed_chunks=100,
                new_chunks=90,
                bytes_read=100 * 65536,
                bytes_stored=2_000_000,
                incremental=False,
            ),
        ),
    ),
    events.SnapshotCommitted: events.SnapshotCommitted(
        at_ms=1_767_225_604_100, snapshot="ab" * 32, vm="web-1", root="01" * 32
    ),
    events.InitialSnapshotReleased: events.InitialSnapshotReleased(
        at_ms=1_767_225_604_200, snapshot="ab" * 32, vm="web-1"
    ),
    events.InitialSnapshotDeleted: events.InitialSnapshotDeleted(
        at_ms=1_767_225_605_000, snapshot="ab" * 32, vm="web-1", views_released=0
    ),
    events.TargetStagingDeleted: events.TargetStagingDeleted(
        at_ms=1_767_225_605_100, snapshot="ab" * 32, vm="web-1", node="transfer-1"
    ),
    events.TargetSnapshotDeleted: events.TargetSnapshotDeleted(
        at_ms=1_767_225_605_200, snapshot="ab" * 32, vm="web-1", reason="operator"
    ),
    events.GarbageCollected: events.GarbageCollected(
        at_ms=1_767_225_606_000, chunks=10, copies=20, bytes_reclaimed=1 << 20
    ),
    events.RollbackStarted: events.RollbackStarted(
        at_ms=1_767_225_607_000, rollback="cd" * 32, vm="web-1", snapshot="ab" * 32, mode="normal"
    ),
    events.RollbackFinished: events.RollbackFinished(
        at_ms=1_767_225_608_000,
        rollback="cd" * 32,
        vm="web-1",
        snapshot="ab" * 32,
        chunks_checked=100,
        chunks_restored=3,
        bytes_restored=196608,
        seconds=1.5,
    ),
    events.SnapshotFailed: events.SnapshotFailed(
        at_ms=1_767_225_604_300, snapshot="ab" * 32, vm="web-1", reason="business-1 unreachable"
    ),
    events.ScheduleSet: events.ScheduleSet(
        at_ms=1_767_225_609_000,
        vm="web-1",
        name="nightly",
        schedule="every 10d 02:00",
        tz="Europe/Berlin",
        anchor="2026-01-01",
        retention=RULES,
    ),
    events.ScheduleCleared: events.ScheduleCleared(at_ms=1_767_225_610_000, vm="web-1", name="n"),
    events.ScheduledRun: events.ScheduledRun(
        at_ms=1_767_225_611_000,
        vm="web-1",
        name="nightly",
        slot_ms=1_767_225_600_000,
        outcome="taken",
        snapshot="ab" * 32,
        detail="",
        slots=1,
    ),
    events.RetentionPolicySet: events.RetentionPolicySet(
        at_ms=1_767_225_612_000, vm="web-1", retention=RULES
    ),
    events.RetentionPolicyCleared: events.RetentionPolicyCleared(at_ms=1_767_225_613_000, vm="w"),
    events.RetentionApplied: events.RetentionApplied(
        at_ms=1_767_225_614_000,
        vm="web-1",
        group="schedule nightly",
        rules=RULES,
        decisions=(
            events.RetentionDecision("ab" * 32, True, ("last 3", "daily 2026-01-01")),
            events.RetentionDecision("cd" * 32, False, ("beyond keep-last 3",)),
        ),
        part=1,
        parts=1,
    ),
    events.SnapshotProtected: events.SnapshotProtected(
        at_ms=1_767_225_615_000, snapshot="ab" * 32, vm="web-1", protected=True
    ),
    events.RollbackStartTagged: events.RollbackStartTagged(
        at_ms=1_767_225_616_000, rollback="cd" * 32, vm="web-1", tags=(TAG,), auto=False
    ),
    events.RollbackRestored: events.RollbackRestored(
        at_ms=1_767_225_617_000,
        rollback="cd" * 32,
        vm="web-1",
        chunks_checked=100,
        chunks_restored=4,
        bytes_restored=262144,
    ),
    events.RollbackEndTagged: events.RollbackEndTagged(
        at_ms=1_767_225_618_000,
        rollback="cd" * 32,
        vm="web-1",
        tags=(TAG,),
        difference_root="12" * 32,
        changed_chunks=2,
    ),
    events.RollbackAbandoned: events.RollbackAbandoned(
        at_ms=1_767_225_619_000, rollback="cd" * 32, vm="web-1", reason="interrupted"
    ),
}


def body_of(event: events.Event) -> dict[str, Any]:
    body: dict[str, Any] = cbor2.loads(events.encode(event))
    return body


def payload(body: object) -> bytes:
    return cbor2.dumps(body, canonical=True)


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(events.EVENT_TYPES.values())
    assert {cls.__name__: cls for cls in SAMPLES} == events.EVENT_TYPES


@pytest.mark.parametrize("event", SAMPLES.values(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_its_payload(event: events.Event) -> None:
    assert events.decode(events.encode(event)) == event


@pytest.mark.parametrize("event", SAMPLES.values(), ids=lambda e: type(e).__name__)
def test_payload_names_the_type_and_schema_and_holds_plain_fields(event: events.Event) -> None:
    body = body_of(event)

    assert set(body) == {"type", "v", "fields"}
    assert body["type"] == type(event).__name__
    assert body["v"] == type(event).SCHEMA == 1
    assert body["fields"] == events.as_dict(event)


@pytest.mark.parametrize("event", SAMPLES.values(), ids=lambda e: type(e).__name__)
def test_payload_is_canonical_cbor(event: events.Event) -> None:
    encoded = events.encode(event)

    assert payload(cbor2.loads(encoded)) == encoded


def test_encoding_does_not_depend_on_how_the_event_was_built() -> None:
    sample = SAMPLES[events.VmRegistered]
    assert isinstance(sample, events.VmRegistered)
    rebuilt = events.VmRegistered(
        disks=tuple(
            events.Disk(size=d.size, resource_id=d.resource_id, role=d.role) for d in sample.disks
        ),
        ip=sample.ip,
        vm_type=sample.vm_type,
        vm=sample.vm,
        at_ms=sample.at_ms,
    )
    from_list = events.VmRegistered(
        at_ms=sample.at_ms,
        vm=sample.vm,
        vm_type=sample.vm_type,
        ip=sample.ip,
        disks=list(sample.disks),  # type: ignore[arg-type]
    )

    assert events.encode(rebuilt) == events.encode(sample)
    assert events.encode(from_list) == events.encode(sample)


def test_as_dict_turns_nested_disks_into_plain_maps() -> None:
    assert events.as_dict(SAMPLES[events.VmRegistered]) == {
        "at_ms": 1_767_225_601_000,
        "vm": "web-1",
        "vm_type": "kvm",
        "ip": "10.0.0.5",
        "disks": [
            {"role": "system", "resource_id": "root", "size": 20 << 30},
            {"role": "data", "resource_id": "srv", "size": 512},
        ],
    }


def test_streams_are_the_deployment_stream_and_one_per_vm() -> None:
    assert SAMPLES[events.LedgerOpened].stream == events.DEPLOYMENT_STREAM == "deployment"
    assert SAMPLES[events.VmRegistered].stream == "vm/web-1"
    assert events.vm_stream("db") == "vm/db"


def test_stream_id_is_the_keccak_of_the_stream_name() -> None:
    assert events.stream_id("vm/web-1") == keccak(b"vm/web-1")
    assert len(events.stream_id("deployment")) == 32


def opened_body(**changes: Any) -> dict[str, Any]:
    body = body_of(SAMPLES[events.LedgerOpened])
    body.update(changes)
    return body


def opened_fields(**changes: Any) -> dict[str, Any]:
    body = opened_body()
    body["fields"].update(changes)
    return body


def registered_body(disks: Any) -> dict[str, Any]:
    body = body_of(SAMPLES[events.VmRegistered])
    body["fields"]["disks"] = disks
    return body


def without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


DISK = {"role": "system", "resource_id": "root", "size": 512}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff", id="not-cbor"),
        pytest.param(payload(["LedgerOpened", 1, {}]), id="not-a-map"),
        pytest.param(payload(opened_body(type="SnapshotTaken")), id="unknown-type"),
        pytest.param(payload(opened_body(type="Event")), id="base-type"),
        pytest.param(payload(opened_body(type=["LedgerOpened"])), id="type-not-a-string"),
        pytest.param(payload(opened_body(v=2)), id="newer-schema"),
        pytest.param(payload(opened_body(v=0)), id="older-schema"),
        pytest.param(payload(opened_body(v="1")), id="schema-as-text"),
        pytest.param(payload(opened_body(v=True)), id="schema-as-boolean"),
        pytest.param(payload(without(opened_body(), "v")), id="no-schema"),
        pytest.param(payload(without(opened_body(), "fields")), id="no-fields"),
        pytest.param(payload(opened_body(fields=[1, 2])), id="fields-not-a-map"),
        pytest.param(
            payload({**opened_body(), "fields": without(opened_body()["fields"], "chain_id")}),
            id="missing-field",
        ),
        pytest.param(payload(opened_fields(extra="x")), id="extra-field"),
        pytest.param(payload(opened_fields(chain_id="1")), id="text-for-integer"),
        pytest.param(payload(opened_fields(at_ms=1.5)), id="float-for-integer"),
        pytest.param(payload(opened_fields(at_ms=True)), id="boolean-for-integer"),
        pytest.param(payload(opened_fields(deployment=7)), id="integer-for-text"),
        pytest.param(payload(opened_fields(contract=b"\x00" * 20)), id="bytes-for-text"),
        pytest.param(payload(opened_fields(deployment=None)), id="null-for-text"),
        pytest.param(payload(registered_body(5)), id="disks-not-a-list"),
        pytest.param(payload(registered_body([5])), id="disk-not-a-map"),
        pytest.param(payload(registered_body(["root"])), id="disk-as-text"),
        pytest.param(payload(registered_body([without(DISK, "size")])), id="disk-missing-field"),
        pytest.param(payload(registered_body([{**DISK, "size": "512"}])), id="disk-size-as-text"),
        pytest.param(payload(registered_body([{**DISK, "extra": 1}])), id="disk-extra-field"),
    ],
)
def test_decode_refuses_anything_that_is_not_an_event(raw: bytes) -> None:
    with pytest.raises(LedgerCorrupted) as caught:
        events.decode(raw)

    assert caught.value.message.startswith("ledger integrity check failed: ")
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("depth", [10, 1_000, 100_000])
def test_decode_refuses_deeply_nested_payloads(depth: int) -> None:
    with pytest.raises(LedgerCorrupted):
        events.decode(b"\x81" * depth + b"\x00")


@given(st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_is_an_event_or_ledger_corrupted(raw: bytes) -> None:
    try:
        decoded = events.decode(raw)
    except LedgerCorrupted:
        return
    assert isinstance(decoded, events.Event)


SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
PLAIN = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    event=st.sampled_from(list(SAMPLES.values())),
    name=st.sampled_from(["v", "at_ms", "deployment", "contract", "chain_id", "vm", "ip", "disks"]),
    value=SCALAR | PLAIN,
)
def test_one_field_replaced_by_any_value_is_refused_or_still_canonical(
    event: events.Event, name: str, value: object
) -> None:
    body = body_of(event)
    if name == "v":
        body["v"] = value
    elif name in body["fields"]:
        body["fields"][name] = value
    else:
        body["fields"] = {**body["fields"], name: value}
    raw = payload(body)
    try:
        decoded = events.decode(raw)
    except LedgerCorrupted:
        return
    assert events.encode(decoded) == raw
    assert_exact_types(decoded)


def assert_exact_types(value: object) -> None:
    """Every field holds exactly its declared type (a bool is not an int here)."""
    hints = get_type_hints(type(value))
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        held, hint = getattr(value, field.name), hints[field.name]
        origin = typing.get_origin(hint)
        if origin is tuple:
            assert type(held) is tuple, field.name
            (item_hint, _ellipsis) = typing.get_args(hint)
            for item in held:
                if dataclasses.is_dataclass(item):
                    assert_exact_types(item)
                else:
                    assert type(item) is item_hint, (field.name, item)
        elif origin in (typing.Union, types.UnionType):
            assert type(held) in typing.get_args(hint), (field.name, held)
        else:
            assert type(held) is hint, (field.name, held)


@given(kind=st.sampled_from([*events.EVENT_TYPES, "Other"]), version=PLAIN, fields=PLAIN)
def test_decode_of_any_event_shaped_map_is_an_event_or_ledger_corrupted(
    kind: str, version: object, fields: object
) -> None:
    try:
        decoded = events.decode(payload({"type": kind, "v": version, "fields": fields}))
    except LedgerCorrupted:
        return
    assert isinstance(decoded, events.Event)
