"""Deleting a snapshot from its three places (the seed's S1410-S1430), then collecting garbage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from ledger import events
from ledger.contract import Entry, Fact, SnapshotStatus
from ledger.errors import Conflict, VmsnapError
from ledger.service import Ledger
from nodes.chunks import ChunkCodec
from nodes.crashpoints import crash_point
from nodes.gc import DataGate, collect
from nodes.replication import BackupCluster
from nodes.snapshots import Snapshots

Runner = Callable[..., Awaitable[Any]]


class NotDeletable(Conflict):
    """Only committed snapshots can be deleted."""

    def __init__(self, snapshot: str, status: str) -> None:
        super().__init__(
            f"snapshot {snapshot[:12]} is {status}; only committed snapshots are deleted"
        )


class Protected(Conflict):
    """A protected snapshot is never deleted, by hand or by retention."""

    def __init__(self, snapshot: str) -> None:
        super().__init__(
            f"snapshot {snapshot[:12]} is protected; run vmsnap snapshot unprotect {snapshot[:12]} "
            "first"
        )


class Deletion:
    """Delete: business initial snapshot → transfer staging → backup target, then GC.

    The three places are cleared first and then recorded, one event each, in
    one transaction; the last marks the snapshot deleted in the contract (which
    keeps its record forever). Garbage collection then removes every chunk no
    live manifest references, never while a snapshot is writing. The deleter
    account signs it all; without it nothing is touched.
    """

    def __init__(
        self,
        ledger: Ledger,
        snapshots: Snapshots,
        cluster: BackupCluster,
        codec: ChunkCodec,
        gate: DataGate,
        on_ledger: Runner,
    ) -> None:
        self.ledger = ledger
        self.snapshots = snapshots
        self.cluster = cluster
        self.codec = codec
        self.gate = gate
        self._on_ledger = on_ledger

    async def delete(
        self, ref: str, reason: str = "operator", gc: bool = True, retired: bool = False
    ) -> dict[str, Any]:
        """Delete one committed snapshot (`retired`: by a retention rule); then collect garbage."""
        await self._on_ledger(self.ledger.check_deleter)
        snap = await self.snapshots.resolve(ref)
        if snap["status"] != "committed":
            raise NotDeletable(snap["id"], snap["status"])
        if snap.get("protected"):
            raise Protected(snap["id"])
        vm, snapshot = snap["vm"], snap["id"]
        released = 0
        for disk in await self.snapshots.disks_of(snap):
            reply = await self.snapshots.peers.call(
                disk["node"],
                "volume.release",
                {"vm": vm, "resource_id": disk["resource_id"], "view": snapshot},
            )
            released += int(bool(reply.get("released")))
        node = self.snapshots.transfer_node(vm)
        await self.snapshots.peers.call(node, "transfer.discard", {"view": snapshot})
        crash_point("delete.cleared", vm)
        now = self.ledger.now_ms()
        version = await self._on_ledger(self.ledger.projection.stream_version, events.vm_stream(vm))
        status = SnapshotStatus.RETIRED if retired else SnapshotStatus.DELETED
        fact = Fact(bytes.fromhex(snapshot), status)
        await self._on_ledger(
            self.ledger.append,
            [
                Entry(events.InitialSnapshotDeleted(now, snapshot, vm, released), version),
                Entry(events.TargetStagingDeleted(now, snapshot, vm, node), version + 1),
                Entry(events.TargetSnapshotDeleted(now, snapshot, vm, reason), version + 2, fact),
            ],
            True,
        )
        crash_point("delete.recorded", vm)
        result: dict[str, Any] = {"snapshot": snapshot, "vm": vm, "views_released": released}
        if gc:
            result.update(await self.collect_reporting(deleting=True))
        return result

    async def collect_reporting(self, deleting: bool = False) -> dict[str, Any]:
        """Collect garbage; a failed collection is reported, not raised (the deletion stands)."""
        try:
            return {"gc": await self.collect(deleting)}
        except VmsnapError as err:
            return {"gc": None, "gc_error": f"garbage collection skipped: {err}"}

    async def _mirrored(self) -> set[bytes]:
        """Chunks the open mirrors of fast rollbacks show: kept like live snapshots' chunks."""
        ids: set[bytes] = set()
        for node in self.cluster.nodes:
            reply = await self.snapshots.peers.call(node, "mirror.references", {})
            ids.update(reply["ids"])
        return ids

    async def collect(self, deleting: bool = False) -> dict[str, Any]:
        """Remove unreferenced chunks and record it (signed by the deleter when `deleting`)."""
        async with self.gate.collection():
            live = await self._on_ledger(self.ledger.projection.snapshots, None, "committed")
            report = await collect(self.cluster, self.codec, live, await self._mirrored())
        done = events.GarbageCollected(
            self.ledger.now_ms(), report.chunks, report.copies, report.bytes_reclaimed
        )
        version = await self._on_ledger(
            self.ledger.projection.stream_version, events.DEPLOYMENT_STREAM
        )
        await self._on_ledger(self.ledger.append, [Entry(done, version)], deleting)
        return asdict(report)
