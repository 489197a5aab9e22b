from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger import events, vm
from ledger.contract import Entry, Fact, LedgerRecord, SnapshotStatus
from ledger.errors import LedgerCorrupted, LedgerError
from ledger.projection import Projection
from ledger.service import Ledger

ROOT = events.Disk("system", "root", 20 << 30)
DATA = events.Disk("data", "data", 100 << 30)


def registration(name: str, ip: str, *disks: events.Disk) -> events.VmRegistered:
    return vm.registration(name, "kvm", ip, disks or (ROOT,), at_ms=1_000)


@pytest.fixture
def records(ledger: Ledger) -> list[LedgerRecord]:
    """LedgerOpened, then web alone, then db and cache in one batch."""
    ledger.append([Entry(registration("web", "10.0.0.1", ROOT, DATA), 0)])
    ledger.append(
        [
            Entry(registration("db", "10.0.0.2"), 0),
            Entry(registration("cache", "10.0.0.3"), 0),
        ]
    )
    return ledger.records()


@pytest.fixture
def projection(projection_urls: Callable[[str], str]) -> Iterator[Projection]:
    opened = Projection(projection_urls("fold"))
    try:
        yield opened
    finally:
        opened.close()


def test_empty_projection_has_no_rows_and_a_zero_checkpoint(projection: Projection) -> None:
    assert projection.checkpoint() == (0, 0)
    assert projection.vms() == []
    assert projection.events() == []
    assert projection.stream_version("vm/web") == 0
    assert set(projection.dump()) == {
        "events",
        "streams",
        "vms",
        "disks",
        "checkpoint",
        "snapshots",
        "snapshot_disks",
        "rollbacks",
        "schedules",
        "schedule_runs",
        "retention_policies",
    }
    assert all(rows == [] for rows in projection.dump().values())


def test_apply_folds_every_record_and_checkpoints_the_last(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    assert projection.apply(records) == 4

    assert projection.checkpoint() == (4, records[-1].block_number)
    assert [v["name"] for v in projection.vms()] == ["cache", "db", "web"]
    assert projection.stream_version("vm/web") == 1
    assert projection.stream_version(events.DEPLOYMENT_STREAM) == 1


def test_vm_view_has_its_disks_and_where_it_was_registered(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    projection.apply(records)

    assert projection.vm("web") == {
        "name": "web",
        "type": "kvm",
        "ip": "10.0.0.1",
        "registered_at_ms": 1_000,
        "registered_seq": 2,
        "disks": [
            {
                "role": "data",
                "resource_id": "data",
                "size": 100 << 30,
                "node": None,
                "chunk_size": None,
            },
            {
                "role": "system",
                "resource_id": "root",
                "size": 20 << 30,
                "node": None,
                "chunk_size": None,
            },
        ],
    }
    assert projection.vm("nowhere") is None


def test_disk_placed_records_the_node_and_chunk_size_of_that_disk(
    projection: Projection, records: list[LedgerRecord], ledger: Ledger
) -> None:
    placed = events.DiskPlaced(
        at_ms=5, vm="web", resource_id="root", node="business-2", chunk_size=65536
    )
    (record,) = ledger.contract.append([Entry(placed, 1)])
    projection.apply([*records, record])

    vm = projection.vm("web")
    assert vm is not None
    disks = {d["resource_id"]: (d["node"], d["chunk_size"]) for d in vm["disks"]}
    assert disks == {"root": ("business-2", 65536), "data": (None, None)}


def test_events_view_is_in_sequence_order_by_stream_and_limit(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    projection.apply(records)

    every = projection.events()
    assert [e["seq"] for e in every] == [1, 2, 3, 4]
    assert [e["type"] for e in every] == ["LedgerOpened"] + ["VmRegistered"] * 3
    assert every[1]["fields"] == events.as_dict(records[1].event)
    assert every[1]["head"] == "0x" + records[1].head.hex()
    assert every[1]["tx_hash"] == "0x" + records[1].tx_hash.hex()
    assert every[1]["sender"] == records[1].sender
    assert [e["seq"] for e in projection.events(stream="vm/db")] == [3]
    assert [e["seq"] for e in projection.events(limit=2)] == [3, 4]
    assert projection.events(stream="vm/nowhere") == []


def test_applying_the_same_records_twice_changes_nothing(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    projection.apply(records)
    before = projection.dump()

    assert projection.apply(records) == 0
    assert projection.dump() == before


def test_overlapping_batches_fold_to_the_same_tables_as_one_batch(
    projection: Projection, records: list[LedgerRecord], tmp_path: Path
) -> None:
    projection.apply(records[:2])
    assert projection.apply(records[1:3]) == 1
    assert projection.apply(records) == 1

    whole = Projection(f"sqlite:///{tmp_path / 'whole.sqlite'}")
    try:
        whole.apply(records)
        assert projection.dump() == whole.dump()
    finally:
        whole.close()


def test_gap_in_the_records_is_refused_and_nothing_of_the_batch_is_kept(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    projection.apply(records[:1])
    before = projection.dump()

    with pytest.raises(LedgerCorrupted) as caught:
        projection.apply([records[1], records[3]])

    assert "event 4 follows 2" in caught.value.message
    assert projection.dump() == before
    assert projection.checkpoint() == (1, records[0].block_number)


def test_first_record_after_a_gap_from_the_checkpoint_is_refused(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    with pytest.raises(LedgerCorrupted):
        projection.apply(records[1:])

    assert projection.checkpoint() == (0, 0)


def test_record_logged_on_another_stream_than_its_event_names_is_refused(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    moved = dataclasses.replace(records[1], stream_id=events.stream_id("vm/db"))

    with pytest.raises(LedgerCorrupted):
        projection.apply([records[0], moved])

    assert projection.checkpoint() == (0, 0)


def test_record_with_an_undecodable_payload_is_refused(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    broken = dataclasses.replace(records[1], payload=b"\xa0")

    with pytest.raises(LedgerCorrupted):
        projection.apply([records[0], broken])

    assert projection.vms() == []


def test_a_second_registration_on_chain_replaces_the_vm_and_its_disks(
    projection: Projection, records: list[LedgerRecord], ledger: Ledger
) -> None:
    (again,) = ledger.contract.append([Entry(registration("web", "10.0.0.9"), 1)])
    projection.apply(records)

    assert projection.apply([again]) == 1

    vm = projection.vm("web")
    assert vm is not None
    assert vm["ip"] == "10.0.0.9"
    assert vm["registered_seq"] == again.seq
    assert projection.stream_version("vm/web") == 2


def test_a_database_failure_is_a_ledger_error_of_one_line(
    projection: Projection, records: list[LedgerRecord], tmp_path: Path
) -> None:
    projection.apply(records[:1])
    projection.close()
    broken = Projection(f"sqlite:///{tmp_path / 'other.sqlite'}")
    try:
        with broken._engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE events")
        with pytest.raises(LedgerError) as caught:
            broken.apply(records)
        assert "\n" not in str(caught.value)
        assert str(caught.value).startswith("projection database error:")
    finally:
        broken.close()


def test_reset_drops_every_row_and_a_new_fold_rebuilds_the_same_tables(
    projection: Projection, records: list[LedgerRecord]
) -> None:
    projection.apply(records)
    built = projection.dump()

    projection.reset()
    assert projection.checkpoint() == (0, 0)
    assert all(rows == [] for rows in projection.dump().values())

    projection.apply(records)
    assert projection.dump() == built


def test_projection_file_keeps_its_tables_across_a_reopen(
    records: list[LedgerRecord], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'kept.sqlite'}"
    first = Projection(url)
    try:
        first.apply(records)
        built = first.dump()
    finally:
        first.close()

    again = Projection(url)
    try:
        assert again.dump() == built
        assert again.checkpoint() == (4, records[-1].block_number)
    finally:
        again.close()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sqlite:////nonexistent-folder/projection.sqlite", id="unopenable-file"),
        pytest.param("nosuchdb://host/db", id="unknown-dialect"),
    ],
)
def test_unusable_database_url_is_a_one_line_ledger_error(url: str) -> None:
    with pytest.raises(LedgerError) as caught:
        Projection(url).close()

    assert caught.value.message.startswith(f"cannot open the projection database {url}: ")
    assert "\n" not in caught.value.message


def commit_snapshot(ledger: Ledger, snapshot: str) -> None:
    """Record a snapshot of web, requested and committed (web registered on first use)."""
    if ledger.projection.vm("web") is None:
        ledger.append([Entry(registration("web", "10.0.0.1"), 0)])
    version = ledger.projection.stream_version(events.vm_stream("web"))
    subject, root = bytes.fromhex(snapshot), "ab" * 32
    ledger.append(
        [
            Entry(
                events.SnapshotRequested(2_000, snapshot, "web", ("root",), None),
                version,
                Fact(subject, SnapshotStatus.PENDING),
            ),
            Entry(
                events.SnapshotCommitted(2_000, snapshot, "web", root),
                version + 1,
                Fact(subject, SnapshotStatus.COMMITTED, bytes.fromhex(root)),
            ),
        ]
    )


def test_latest_snapshot_is_the_newest_of_that_vm_in_that_status(ledger: Ledger) -> None:
    commit_snapshot(ledger, "01" * 32)
    commit_snapshot(ledger, "02" * 32)

    newest = ledger.projection.latest_snapshot("web", "committed")
    assert newest is not None and newest["id"] == "02" * 32
    assert newest == ledger.projection.snapshots("web", "committed")[-1]
    assert ledger.projection.latest_snapshot("web", "pending") is None
    assert ledger.projection.latest_snapshot("db", "committed") is None
