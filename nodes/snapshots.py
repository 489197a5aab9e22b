"""The snapshot workflow: a saga whose every step is a ledger event (3 transactions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import blake3

from ledger import events
from ledger.contract import Entry, Fact, SnapshotStatus
from ledger.errors import NotFound, VmsnapError
from ledger.service import Ledger
from nodes.activity import Activity, VmBusy
from nodes.config import Config
from nodes.crashpoints import crash_point
from nodes.gc import DataGate
from nodes.manifest import snapshot_root
from nodes.peers import Peers, node_names
from nodes.placement import Placement, UnknownDisk
from nodes.replication import placement as rendezvous

Runner = Callable[..., Awaitable[Any]]
log = logging.getLogger("vmsnap.snapshots")
TRANSFER_TIMEOUT = 6 * 3600.0
RELEASE_RETRY = 2.0
RELEASE_ATTEMPTS = 1800


class UnknownSnapshot(NotFound):
    """No snapshot has that id (or id prefix)."""

    def __init__(self, ref: str, detail: str = "") -> None:
        super().__init__(f"unknown snapshot {ref!r}{detail}: see vmsnap snapshot list")


class SnapshotFailedError(VmsnapError):
    """A snapshot could not be taken; it was undone and recorded as failed."""

    def __init__(self, snapshot: str, reason: str) -> None:
        super().__init__(f"snapshot {snapshot[:12]} failed and was undone: {reason}")
        self.snapshot = snapshot


def new_snapshot_id(vm: str) -> str:
    """A fresh 32-byte snapshot id, hex (the contract's subject)."""
    return blake3.blake3(f"{vm}\0{time.time_ns()}".encode() + os.urandom(16)).hexdigest()


class StepTimes:
    """Wall seconds of each step of one snapshot, for the controller's log."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self._steps: list[str] = []

    def mark(self, step: str) -> None:
        """End `step` now."""
        now = time.perf_counter()
        self._steps.append(f"{step} {now - self._last:.3f}")
        self._last = now

    def summary(self) -> str:
        """Total seconds, then each step's."""
        return f"{self._last - self._start:.3f} s ({', '.join(self._steps)})"


class Snapshots:
    """The snapshot saga, run by the controller.

    Steps: requested → frozen (business) → processed (transfer) → committed
    with its root (backup, R copies; on chain) → released (business).
    The transactions: ``SnapshotRequested``; then ``InitialSnapshotTaken``,
    ``TargetProcessed`` and ``SnapshotCommitted`` in one batch; then
    ``InitialSnapshotReleased``. A failure before the commit releases the
    frozen views and records ``SnapshotFailed``; after a crash, ``recover``
    does the same for every snapshot left pending, and finishes the release
    of committed ones. A release that fails because the business node is down
    is retried in the background; the VM takes no new snapshot until it is done.
    """

    def __init__(
        self, config: Config, ledger: Ledger, peers: Peers, places: Placement, on_ledger: Runner
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.peers = peers
        self.places = places
        self._on_ledger = on_ledger
        self.activity = Activity()
        self.gate = DataGate()
        self._progress: dict[str, dict[str, int]] = {}
        self._releasing: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        """Stop retrying the releases still waiting for their business node."""
        for task in list(self._releasing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _append(self, entries: list[Entry]) -> None:
        await self._on_ledger(self.ledger.append, entries)

    async def _version(self, vm: str) -> int:
        version: int = await self._on_ledger(
            self.ledger.projection.stream_version, events.vm_stream(vm)
        )
        return version

    def transfer_node(self, vm: str) -> str:
        """The transfer node that processes `vm`'s snapshots."""
        return self._transfer_node(vm)

    def _transfer_node(self, vm: str) -> str:
        return rendezvous(vm.encode(), node_names(self.config, "transfer"), 1)[0]

    async def create(self, vm: str, disks: list[str] | None = None) -> dict[str, Any]:
        """Take a snapshot of `disks` (default: all) of `vm`; return the committed snapshot."""
        times = StepTimes()
        shown = await self.places.place(vm)
        chosen = [d for d in shown["disks"] if not disks or d["resource_id"] in disks]
        for name in disks or []:
            if name not in {d["resource_id"] for d in shown["disks"]}:
                raise UnknownDisk(vm, name)
        await self._check_idle(vm)
        times.mark("check")
        snapshot = new_snapshot_id(vm)
        try:
            with self.activity.claim(vm, "snapshot", snapshot):
                async with self.gate.snapshot():
                    found = await self._run(vm, snapshot, chosen, times)
            log.info("snapshot %s of %s committed in %s", snapshot[:12], vm, times.summary())
            return found
        finally:
            self._progress.pop(vm, None)

    @staticmethod
    def _estimate(frozen: list[dict[str, Any]], parent: dict[str, Any] | None) -> int:
        """Bytes the transfer will read: changed chunks if incremental, else written ones."""
        return sum(
            int(f["written" if _since_parent(f, parent) is None else "changed"])
            * int(f["chunk_size"])
            for f in frozen
        )

    async def progress(self, vm: str) -> dict[str, Any]:
        """The in-flight snapshot of `vm`: its id, bytes to read and bytes read so far."""
        snapshot = self.activity.current(vm, "snapshot")
        counts = self._progress.get(vm)
        if snapshot is None or counts is None:
            return {"snapshot": snapshot, "total": None, "done": 0}
        try:
            reply = await self.peers.call(
                self._transfer_node(vm), "transfer.progress", {"view": snapshot}
            )
        except VmsnapError:
            reply = {"bytes_read": 0}  # the snapshot itself reports why its transfer node failed
        current = int(reply["bytes_read"] or 0)
        return {"snapshot": snapshot, "total": counts["total"], "done": counts["done"] + current}

    async def check_idle(self, vm: str) -> None:
        """Refuse if `vm` has a snapshot or a rollback running or left pending."""
        await self._check_idle(vm)

    async def _check_idle(self, vm: str) -> None:
        self.activity.check(vm)
        if vm in self._releasing:
            raise VmBusy(vm, "snapshot", self._releasing[vm].get_name())
        await self._on_ledger(self._check_recorded_idle, vm)

    def _check_recorded_idle(self, vm: str) -> None:
        """Refuse if the ledger shows a snapshot or rollback of `vm` left in flight."""
        pending = self.ledger.projection.snapshots(vm, "pending")
        if pending:
            raise VmBusy(vm, "snapshot", pending[0]["id"])
        running = self.ledger.projection.rollbacks(vm, "running")
        if running:
            raise VmBusy(vm, "rollback", running[0]["id"])

    def _parent_and_version(self, vm: str) -> tuple[dict[str, Any] | None, int]:
        """The VM's newest committed snapshot (the next one's parent) and its stream version."""
        projection = self.ledger.projection
        parent = projection.latest_snapshot(vm, "committed")
        return parent, projection.stream_version(events.vm_stream(vm))

    async def _run(
        self, vm: str, snapshot: str, disks: list[dict[str, Any]], times: StepTimes
    ) -> dict[str, Any]:
        parent, version = await self._on_ledger(self._parent_and_version, vm)
        subject = bytes.fromhex(snapshot)
        requested = events.SnapshotRequested(
            self.ledger.now_ms(),
            snapshot,
            vm,
            tuple(d["resource_id"] for d in disks),
            parent["id"] if parent else None,
        )
        await self._append([Entry(requested, version, Fact(subject, SnapshotStatus.PENDING))])
        times.mark("request")
        crash_point("snapshot.requested", vm)
        try:
            frozen = [await self._freeze(vm, snapshot, d, parent) for d in disks]
            times.mark("freeze")
            crash_point("snapshot.frozen", vm)
            self._progress[vm] = {"total": self._estimate(frozen, parent), "done": 0}
            processed = []
            for d, f in zip(disks, frozen, strict=True):
                processed.append(await self._process(vm, snapshot, d, f, parent))
                self._progress[vm]["done"] += processed[-1].bytes_read
            root = snapshot_root({p.resource_id: bytes.fromhex(p.root) for p in processed})
            times.mark("process")
            crash_point("snapshot.processed", vm)
            await self._commit(vm, snapshot, frozen, processed, root, version + 1)
            times.mark("commit")
        except VmsnapError as err:
            await self._undo(vm, snapshot, disks, str(err))
            raise SnapshotFailedError(snapshot, str(err)) from err
        crash_point("snapshot.committed", vm)
        try:
            await self._release(vm, snapshot, disks)
        except VmsnapError as err:
            log.warning("snapshot %s of %s committed; release retried: %s", snapshot[:12], vm, err)
            self._release_later(vm, snapshot, disks)
        times.mark("release")
        found = await self._on_ledger(self.ledger.projection.find_snapshots, snapshot)
        times.mark("read")
        return dict(found[0])

    async def _freeze(
        self, vm: str, snapshot: str, disk: dict[str, Any], parent: dict[str, Any] | None
    ) -> dict[str, Any]:
        args = {
            "vm": vm,
            "resource_id": disk["resource_id"],
            "view": snapshot,
            "parent": parent["id"] if parent else None,
        }
        return await self.peers.call(disk["node"], "volume.freeze", args)

    async def _process(
        self,
        vm: str,
        snapshot: str,
        disk: dict[str, Any],
        frozen: dict[str, Any],
        parent: dict[str, Any] | None,
    ) -> events.SnapshotDisk:
        args: dict[str, Any] = {
            "node": disk["node"],
            "vm": vm,
            "resource_id": disk["resource_id"],
            "view": snapshot,
            "snapshot": snapshot,
            "size": frozen["size"],
            "chunk_size": frozen["chunk_size"],
        }
        since = _since_parent(frozen, parent)
        if parent is not None and since is not None:
            for earlier in parent["disk_details"]:
                if earlier["resource_id"] == disk["resource_id"]:
                    args["parent_manifest"] = bytes.fromhex(earlier["manifest"])
                    args["since"] = since
        reply = await self.peers.call(
            self._transfer_node(vm), "transfer.snapshot", args, timeout=TRANSFER_TIMEOUT
        )
        return events.SnapshotDisk(**reply)

    async def _commit(
        self,
        vm: str,
        snapshot: str,
        frozen: list[dict[str, Any]],
        processed: list[events.SnapshotDisk],
        root: bytes,
        version: int,
    ) -> None:
        now = self.ledger.now_ms()
        generations = tuple(int(f["generation"]) for f in frozen)
        node = self._transfer_node(vm)
        fact = Fact(bytes.fromhex(snapshot), SnapshotStatus.COMMITTED, root)
        await self._append(
            [
                Entry(events.InitialSnapshotTaken(now, snapshot, vm, generations), version),
                Entry(
                    events.TargetProcessed(now, snapshot, vm, node, tuple(processed)), version + 1
                ),
                Entry(events.SnapshotCommitted(now, snapshot, vm, root.hex()), version + 2, fact),
            ]
        )

    async def _undo(self, vm: str, snapshot: str, disks: list[dict[str, Any]], reason: str) -> None:
        for disk in disks:
            try:
                await self.peers.call(
                    disk["node"],
                    "volume.release",
                    {"vm": vm, "resource_id": disk["resource_id"], "view": snapshot},
                )
            except VmsnapError as err:
                log.warning("could not release %s of %s: %s", snapshot[:12], vm, err)
        failed = events.SnapshotFailed(self.ledger.now_ms(), snapshot, vm, reason[:500])
        fact = Fact(bytes.fromhex(snapshot), SnapshotStatus.FAILED)
        await self._append([Entry(failed, await self._version(vm), fact)])

    async def _release(self, vm: str, snapshot: str, disks: list[dict[str, Any]]) -> None:
        """Make the committed view the dirty baseline, release it, record the release."""
        for disk in disks:
            args = {"vm": vm, "resource_id": disk["resource_id"], "view": snapshot}
            await self.peers.call(disk["node"], "volume.commit_base", args)
            await self.peers.call(disk["node"], "volume.release", args)
        released = events.InitialSnapshotReleased(self.ledger.now_ms(), snapshot, vm)
        await self._append([Entry(released, await self._version(vm))])

    def _release_later(self, vm: str, snapshot: str, disks: list[dict[str, Any]]) -> None:
        """Retry a committed snapshot's release in the background until its node is back."""
        task = asyncio.create_task(self._retry_release(vm, snapshot, disks), name=snapshot)
        self._releasing[vm] = task
        task.add_done_callback(lambda _t: self._releasing.pop(vm, None))

    async def _retry_release(self, vm: str, snapshot: str, disks: list[dict[str, Any]]) -> None:
        for _attempt in range(RELEASE_ATTEMPTS):
            await asyncio.sleep(RELEASE_RETRY)
            try:
                await self._release(vm, snapshot, disks)
            except VmsnapError as err:
                log.info("release of snapshot %s waits: %s", snapshot[:12], err)
            else:
                return
        log.warning("snapshot %s of %s left unreleased until a restart", snapshot[:12], vm)

    async def recover(self) -> None:
        """Undo snapshots a crash left pending; finish releasing committed ones."""
        pending = await self._on_ledger(self.ledger.projection.snapshots, None, "pending")
        for snap in pending:
            disks = await self._disks(snap)
            await self._undo(snap["vm"], snap["id"], disks, "interrupted: the controller restarted")
        committed = await self._on_ledger(self.ledger.projection.snapshots, None, "committed")
        for snap in committed:
            if not snap["released"]:
                await self._release(snap["vm"], snap["id"], await self._disks(snap))

    async def disks_of(self, snap: dict[str, Any]) -> list[dict[str, Any]]:
        """The placed disks a snapshot covers."""
        return await self._disks(snap)

    async def _disks(self, snap: dict[str, Any]) -> list[dict[str, Any]]:
        shown = await self._on_ledger(self.ledger.projection.vm, snap["vm"])
        return [d for d in shown["disks"] if d["resource_id"] in snap["disks"] and d["node"]]

    async def resolve(self, ref: str) -> dict[str, Any]:
        """The snapshot whose id is `ref` or starts with it."""
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise UnknownSnapshot(ref, " (give at least 4 hex digits of its id)")
        found = await self._on_ledger(self.ledger.projection.find_snapshots, ref)
        if len(found) != 1:
            raise UnknownSnapshot(ref, " (ambiguous)" if found else "")
        return dict(found[0])


def _since_parent(frozen: dict[str, Any], parent: dict[str, Any] | None) -> int | None:
    """The generation after which a frozen disk changed since `parent`; None: read it whole.

    Known when the parent's view was once the volume's base, even if it no longer is
    (newer snapshots were deleted since): the chunks written after that generation are
    all that changed.
    """
    if parent is None:
        return None
    generation = frozen.get("parent_generation")
    if isinstance(generation, int) and not isinstance(generation, bool):
        return generation
    if frozen["base_view"] == parent["id"]:
        return int(frozen["base_generation"])
    return None
