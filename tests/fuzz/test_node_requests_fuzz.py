"""Fuzzing every request handler of every node role over real authenticated connections.

A running local network (real node processes on loopback, ledger replicas on) gets
requests with unknown operations, wrong types, missing, extra and huge fields, negative
sizes and bad ids. Each must be answered with a clean error (never an internal error),
must leave the ledger head, the volumes and the stored chunks as they were, and the
node must still answer a good request afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nodes.errors import RemoteError
from tests.cli.conftest import Deployment
from tests.fuzz.conftest import FUZZ_DISK, FUZZ_VM
from tests.fuzz.nodes import NODES, NetworkClients
from tests.fuzz.tally import fuzz, ran

COMMON = ["node.status", "ping"]
REPLICA = ["replica.head", "replica.apply", "replica.blocks", "replica.verify"]
MIRROR = [
    "mirror.create", "mirror.read", "mirror.write", "mirror.zero", "mirror.tag",
    "mirror.journal", "mirror.close", "mirror.references", "journal.copy",
]  # fmt: skip
OPS = {
    "controller": [
        *COMMON, "vm.register", "vm.list", "vm.show", "disk.locate", "snapshot.create",
        "snapshot.list", "snapshot.progress", "snapshot.show", "snapshot.verify",
        "audit.snapshot", "snapshot.delete", "backup.gc", "rollback.start", "rollback.list",
        "rollback.status", "rollback.finish", "rollback.diff", "ledger.log", "ledger.head",
        "ledger.verify", "ledger.replay", "ledger.nodes", "schedule.set", "schedule.list",
        "schedule.clear", "schedule.run_now", "schedule.runs", "retention.set",
        "retention.show", "retention.clear", "retention.apply", "snapshot.protect",
    ],
    "business-1": [
        *COMMON, *REPLICA, "volume.create", "volume.delete", "volume.list", "volume.read",
        "volume.write", "volume.zero", "volume.extents", "volume.flush", "volume.freeze",
        "volume.release", "volume.commit_base", "volume.changed", "volume.read_chunks",
        "volume.read_blocks", "volume.chunk_ids", "volume.allocated", "volume.redirect",
        "volume.hold", "volume.serve_local",
    ],
    "transfer-1": [
        *COMMON, "transfer.process", "transfer.snapshot", "manifest.get", "transfer.progress",
        "transfer.discard", "transfer.restore", "transfer.restore_progress",
    ],
    "backup-1": [
        *COMMON, *REPLICA, *MIRROR, "chunk.has_many", "chunk.put_many", "chunk.get_many",
        "chunk.delete_many", "chunk.list", "store.scrub", "store.compact",
    ],
}  # fmt: skip
SAFE_WITH_REAL_NAMES = {
    "vm.show", "disk.locate", "snapshot.list", "snapshot.progress", "snapshot.show",
    "rollback.list", "rollback.status", "rollback.diff", "ledger.log", "retention.show",
    "retention.set", "schedule.list", "schedule.runs", "volume.read", "volume.extents",
    "volume.changed", "volume.read_chunks", "volume.read_blocks", "volume.chunk_ids",
    "volume.allocated", "volume.list", "replica.blocks", "replica.verify", "chunk.has_many",
    "chunk.get_many", "chunk.list", "manifest.get", "transfer.progress",
    "transfer.restore_progress",
}  # fmt: skip
"""Operations that may name the real VM and disk: a valid call of them changes nothing."""

KEYS = [
    "vm", "resource_id", "name", "id", "ref", "view", "offset", "length", "size", "data",
    "chunk_size", "ids", "items", "indexes", "start", "limit", "since", "after", "node",
    "manifest", "parent_manifest", "snapshot", "mirror", "disks", "type", "ip", "blocks",
    "records", "schedule", "cron", "tz", "anchor", "keep_last", "keep_within", "protected",
    "fast", "auto", "gc", "dry_run", "contract", "deploy_block", "export", "position", "masks",
    "parent",
]  # fmt: skip
NUMBERS = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.sampled_from([0, 1, -1, 4095, 4096, 65536, 1 << 20, 2**31, 2**63 - 1, 2**64 - 1]),
    st.floats(),
)
TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "..", "../..", "a/b", "/", "fuzz-vm/x", "x" * 5000, "\x00", "0x"]),
    st.sampled_from(["every 1h", "cron 0 0 * * *", "30d", "UTC", "America", "ab" * 32]),
)
BLOBS = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", bytes(32), b"\xff" * 32, bytes(65536), bytes(1 << 18)]),
)


def values(real_names: bool) -> st.SearchStrategy[Any]:
    """Argument values of every type, including the real VM and disk names when allowed."""
    scalars = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS, BLOBS)
    if real_names:
        scalars = st.one_of(scalars, st.sampled_from([FUZZ_VM, FUZZ_DISK]))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=4),
        ),
        max_leaves=8,
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """A node, an operation it serves (or an unknown one), and arguments for it."""
    node = draw(st.sampled_from(list(OPS)))
    op = draw(st.sampled_from(OPS[node]) | st.text(max_size=16))
    real_names = op in SAFE_WITH_REAL_NAMES
    names = [FUZZ_VM, FUZZ_DISK] if real_names else ["no-such-vm", "no-such-disk"]
    base = draw(st.sampled_from([{}, {"vm": names[0]}, {"vm": names[0], "resource_id": names[1]}]))
    keys = st.sampled_from(KEYS) | st.text(max_size=6)
    args = draw(st.dictionaries(keys, values(real_names), max_size=5))
    return node, op, {**base, **args}


@pytest.fixture(scope="module")
def clients(network: Deployment) -> Iterator[NetworkClients]:
    """Connections to every node of the fuzz network."""
    connected = NetworkClients(network.root)
    try:
        yield connected
    finally:
        connected.close()


def assert_clean_error(answer: dict[str, Any] | RemoteError, node: str, op: str) -> None:
    """An error answer names a known kind with a one-line message; never an internal error."""
    if isinstance(answer, RemoteError):
        assert answer.kind != "InternalError", f"{op} on {node}: {answer.message}"
        assert answer.message and "\n" not in answer.message, answer.message
        assert answer.exit_code >= 2, (answer.kind, answer.exit_code)


@fuzz(60)
@given(requests())
@example(("business-1", "volume.create", {"vm": "..", "resource_id": "escape", "size": 4096}))
@example(("business-1", "volume.create", {"vm": "v", "resource_id": "d", "size": 2**63 - 1}))
@example(
    (
        "business-1",
        "volume.create",
        {"vm": "v", "resource_id": "d", "size": 4096, "chunk_size": "x"},
    )
)
@example(("business-1", "volume.changed", {"vm": FUZZ_VM, "resource_id": FUZZ_DISK, "start": "x"}))
@example(
    (
        "business-1",
        "volume.extents",
        {"vm": FUZZ_VM, "resource_id": FUZZ_DISK, "offset": 2**40, "length": 1},
    )
)
@example(
    (
        "controller",
        "schedule.set",
        {"vm": FUZZ_VM, "schedule": "every 2d 01:00", "tz": "Nowhere/City"},
    )
)
@example(
    ("controller", "vm.register", {"name": "v", "type": "kvm", "ip": "1.2.3.4", "disks": [{}]})
)
@example(
    (
        "business-1",
        "volume.read_blocks",
        {"vm": FUZZ_VM, "resource_id": FUZZ_DISK, "indexes": [0], "masks": [1 << 16]},
    )
)
@example(("backup-1", "chunk.put_many", {"items": [[bytes(32)]]}))
@example(("controller", "ledger.log", {"limit": -1}))
def test_a_bad_request_gets_a_clean_error_and_changes_nothing(
    clients: NetworkClients, sent: tuple[str, str, dict[str, Any]]
) -> None:
    ran("nodes: requests to every role")
    node, op, args = sent
    before = clients.state()
    answer = clients.call(node, op, args)
    assert_clean_error(answer, node, op)
    if isinstance(answer, RemoteError):
        assert clients.state() == before, f"{op} on {node} failed but changed state"
    assert clients.call(node, "ping", {})["node"] == node


def test_every_listed_operation_is_served_by_its_node(clients: NetworkClients) -> None:
    for node, ops in OPS.items():
        for op in ops:
            answer = clients.call(node, op, {"fuzz": True})
            kind = answer.kind if isinstance(answer, RemoteError) else None
            assert kind != "UnknownOperation", f"{node} does not serve {op}"


def test_every_node_is_still_up_after_the_fuzzing(clients: NetworkClients) -> None:
    for node in NODES:
        assert clients.call(node, "ping", {})["node"] == node
