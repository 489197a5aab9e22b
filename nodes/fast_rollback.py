"""Fast rollback (the seed's S1010-S1140): the VM runs on a mirror at once; its writes come back.

Start: ``RollbackStarted`` (mode fast); each disk of the snapshot gets a mirror on a backup
node (metadata only); ``RollbackStartTagged`` puts each mirror journal's start tag (position
and hash) on chain; the VM is stopped, each disk's NBD export switched to its mirror, the VM
started, and the command answers. In the background the snapshot is restored into the
business volumes (only the chunks that differ): ``RollbackRestored``.

Finish: once the restore is done, each export holds its new requests and drains those in
flight; the end tags are read and the difference (the journal between the tags, the last
write to each chunk winning) is computed and checked against the journal's hash chain;
``RollbackEndTagged`` records the end tags and the difference's root; the difference is
written into the volumes; each export serves its volume again (held requests go there,
so nothing is lost), the VM is restarted and the mirrors closed: ``RollbackFinished``.

Every step is idempotent and its record is on the ledger, so ``recover`` finishes (or,
before the start tag, abandons) a fast rollback after a controller restart; a switch to the
mirrors that did not happen after the start tag is made before the restore
(``nodes/mirror_switch.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import blake3

from ledger import events
from ledger.contract import Entry
from ledger.errors import Conflict, InputError, NotFound, VmsnapError
from ledger.service import Ledger
from nodes.chunks import ChunkCodec
from nodes.crashpoints import crash_point
from nodes.journal import difference_root
from nodes.manifest import snapshot_root
from nodes.mirror_service import mirror_nodes
from nodes.mirror_switch import ensure_switched, switch_to_mirrors
from nodes.replication import BackupCluster
from nodes.rollback import RollbackInterrupted, restore_disks
from nodes.rollback_audit import Journals
from nodes.snapshots import Snapshots
from nodes.vm_driver import VmDriver

Runner = Callable[..., Awaitable[Any]]
log = logging.getLogger("vmsnap.fast_rollback")
APPLY_BATCH = 64


class NoFastRollback(NotFound):
    """The VM has no fast rollback in progress."""

    def __init__(self, vm: str) -> None:
        super().__init__(f"VM {vm!r} has no fast rollback in progress")


class FastRollbacks:
    """Start, watch and finish fast rollbacks (audits: ``nodes/rollback_audit.py``)."""

    def __init__(
        self,
        ledger: Ledger,
        snapshots: Snapshots,
        cluster: BackupCluster,
        codec: ChunkCodec,
        driver: VmDriver,
        on_ledger: Runner,
    ) -> None:
        self.ledger = ledger
        self.snapshots = snapshots
        self.cluster = cluster
        self.codec = codec
        self.driver = driver
        self._on_ledger = on_ledger
        self.journals = Journals(ledger, snapshots.peers, cluster, on_ledger)
        self._restores: dict[str, asyncio.Task[None]] = {}
        self._finishing: dict[str, asyncio.Lock] = {}

    @property
    def peers(self) -> Any:
        """The controller's connections to the nodes."""
        return self.snapshots.peers

    async def _append(self, *batch: events.Event) -> None:
        version = await self._on_ledger(self.ledger.projection.stream_version, batch[0].stream)
        entries = [Entry(e, version + i) for i, e in enumerate(batch)]
        await self._on_ledger(self.ledger.append, entries)

    async def _running(self, vm: str) -> dict[str, Any] | None:
        rows = await self._on_ledger(self.ledger.projection.rollbacks, vm, "running")
        return rows[0] if rows else None

    async def start(self, vm: str, ref: str, auto: bool) -> dict[str, Any]:
        """Run `vm` on mirrors of snapshot `ref`; answer once it can do I/O."""
        started = time.monotonic()
        snap = await self.snapshots.resolve(ref)
        if snap["vm"] != vm:
            raise InputError(f"snapshot {snap['id'][:12]} is of VM {snap['vm']!r}, not {vm!r}")
        if snap["status"] != "committed":
            raise InputError(f"snapshot {snap['id'][:12]} is {snap['status']}, not committed")
        running = await self._running(vm)
        if running is not None:
            raise Conflict(
                f"VM {vm!r} has a {running['mode']} rollback in progress ({running['id'][:12]}); "
                f"finish it first (vmsnap rollback finish {vm})"
            )
        await self.snapshots.check_idle(vm)
        rollback = blake3.blake3(f"{vm}\0{snap['id']}\0{time.time_ns()}".encode()).hexdigest()
        now = self.ledger.now_ms()
        await self._append(events.RollbackStarted(now, rollback, vm, snap["id"], "fast"))
        crash_point("fast.started", vm)
        with self.snapshots.activity.claim(vm, "rollback", rollback):
            try:
                tags = await self._mirror(rollback, vm, snap)
            except VmsnapError as err:
                await self._abandon(rollback, vm, snap, f"mirrors could not be made: {err}")
                raise
            await self._append(
                events.RollbackStartTagged(self.ledger.now_ms(), rollback, vm, tags, auto)
            )
            crash_point("fast.tagged", vm)
            try:
                await self._switch_to_mirrors(vm, snap, tags)
            except VmsnapError as err:
                self._background(rollback, vm, snap, auto, switch=True)
                raise RollbackInterrupted(rollback, str(err)) from err
            crash_point("fast.mirrored", vm)
        seconds = time.monotonic() - started
        self._background(rollback, vm, snap, auto)
        return {
            "rollback": rollback,
            "vm": vm,
            "snapshot": snap["id"],
            "mode": "fast",
            "seconds_to_io": seconds,
            "tags": [events.as_dict(t) for t in tags],
        }

    async def _mirror(
        self, rollback: str, vm: str, snap: dict[str, Any]
    ) -> tuple[events.MirrorTag, ...]:
        tags = []
        for detail in snap["disk_details"]:
            resource_id = detail["resource_id"]
            mirror = _mirror_id(rollback, resource_id)
            node = mirror_nodes(mirror, self.cluster.nodes, self.cluster.replicas)[0]
            reply = await self.peers.call(
                node,
                "mirror.create",
                {
                    "mirror": mirror,
                    "vm": vm,
                    "resource_id": resource_id,
                    "manifest": detail["manifest"],
                },
            )
            tags.append(
                events.MirrorTag(
                    resource_id, node, mirror, int(reply["position"]), reply["head"].hex()
                )
            )
        return tuple(tags)

    async def _switch_to_mirrors(
        self, vm: str, snap: dict[str, Any], tags: tuple[events.MirrorTag, ...]
    ) -> None:
        await switch_to_mirrors(
            self.peers, self.driver, vm, await self.snapshots.disks_of(snap), tags
        )

    async def _abandon(self, rollback: str, vm: str, snap: dict[str, Any], reason: str) -> None:
        """Close whatever mirrors were made (none served the VM yet) and record why."""
        for detail in snap["disk_details"]:
            mirror = _mirror_id(rollback, detail["resource_id"])
            node = mirror_nodes(mirror, self.cluster.nodes, self.cluster.replicas)[0]
            try:
                await self.peers.call(node, "mirror.close", {"mirror": mirror})
            except VmsnapError as err:
                log.info("abandoned mirror %s: %s", mirror[:12], err)
        await self._append(events.RollbackAbandoned(self.ledger.now_ms(), rollback, vm, reason))

    def _background(
        self, rollback: str, vm: str, snap: dict[str, Any], auto: bool, switch: bool = False
    ) -> None:
        task = asyncio.create_task(self._restore_then(rollback, vm, snap, auto, switch))
        self._restores[rollback] = task
        task.add_done_callback(lambda _t: self._restores.pop(rollback, None))

    async def _restore_then(
        self, rollback: str, vm: str, snap: dict[str, Any], auto: bool, switch: bool
    ) -> None:
        try:
            if switch:
                await self._ensure_switched(rollback, vm, snap)
            await self._restore(rollback, vm, snap)
            if auto:
                await self.finish(vm)
        except VmsnapError as err:
            log.warning("fast rollback %s of %s paused: %s", rollback[:12], vm, err)

    async def _ensure_switched(self, rollback: str, vm: str, snap: dict[str, Any]) -> None:
        """Switch the VM to its mirrors unless already done (the start tag is on chain)."""
        row = await self._running(vm)
        if row is None or row["id"] != rollback:
            return
        tags = tuple(events.MirrorTag(**t) for t in row["start_tags"])
        disks = await self.snapshots.disks_of(snap)
        if not await ensure_switched(self.peers, self.driver, vm, disks, tags):
            raise RollbackInterrupted(rollback, "the VM could not be switched to its mirrors")

    async def _restore(self, rollback: str, vm: str, snap: dict[str, Any]) -> None:
        totals = await restore_disks(self.snapshots, vm, snap)
        await self._append(events.RollbackRestored(self.ledger.now_ms(), rollback, vm, **totals))

    async def status(self, vm: str) -> dict[str, Any]:
        """The VM's fast rollback in progress (or its last rollback): phase, restore, journals."""
        rows = await self._on_ledger(self.ledger.projection.rollbacks, vm)
        if not rows:
            raise NotFound(f"VM {vm!r} has never been rolled back")
        row = dict(rows[-1])
        row["restore"] = await self._restore_progress(row)
        if row["status"] == "running" and row["start_tags"]:
            journals = []
            for tag in row["start_tags"]:
                reply = await self.peers.call(tag["node"], "mirror.tag", {"mirror": tag["mirror"]})
                journals.append(
                    {
                        "resource_id": tag["resource_id"],
                        "node": tag["node"],
                        "written_since_start": int(reply["position"]) - int(tag["position"]),
                    }
                )
            row["journals"] = journals
        return row

    async def _restore_progress(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Chunks of the background restore checked so far, per disk (None when not running)."""
        if row["mode"] != "fast" or row["phase"] != "mirrored" or row["status"] != "running":
            return None
        snap = await self.snapshots.resolve(row["snapshot"])
        disks = []
        for detail in snap["disk_details"]:
            try:
                reply = await self.peers.call(
                    self.snapshots.transfer_node(row["vm"]),
                    "transfer.restore_progress",
                    {"vm": row["vm"], "resource_id": detail["resource_id"]},
                )
            except VmsnapError as err:
                return {"disks": [], "chunks": 0, "checked": 0, "waiting": str(err)}
            disks.append({"resource_id": detail["resource_id"], "progress": reply["progress"]})
        running = [d["progress"] for d in disks if d["progress"]]
        return {
            "disks": disks,
            "chunks": sum(p["chunks"] for p in running),
            "checked": sum(p["checked"] for p in running),
        }

    async def finish(self, vm: str) -> dict[str, Any]:
        """End the fast rollback of `vm`: tag, difference, apply, switch back, restart."""
        lock = self._finishing.setdefault(vm, asyncio.Lock())
        async with lock:
            row = await self._running(vm)
            if row is None or row["mode"] != "fast" or not row["start_tags"]:
                raise NoFastRollback(vm)
            return await self._finish(row)

    async def _finish(self, row: dict[str, Any]) -> dict[str, Any]:
        rollback, vm = row["id"], row["vm"]
        snap = await self.snapshots.resolve(row["snapshot"])
        task = self._restores.get(rollback)
        if task is not None and task is not asyncio.current_task():
            await task
        row = (await self._running(vm)) or row
        if row["phase"] == "mirrored":
            await self._restore(rollback, vm, snap)
        disks = {d["resource_id"]: d for d in await self.snapshots.disks_of(snap)}
        starts = [events.MirrorTag(**t) for t in row["start_tags"]]
        if row["phase"] != "ending":
            for tag in starts:
                await self.peers.call(
                    disks[tag.resource_id]["node"],
                    "volume.hold",
                    {"vm": vm, "resource_id": tag.resource_id},
                )
            ends, changes = await self._end_tags(starts)
            roots = {t.resource_id: difference_root(changes[t.resource_id]) for t in ends}
            total = sum(len(c) for c in changes.values())
            await self._append(
                events.RollbackEndTagged(
                    self.ledger.now_ms(), rollback, vm, ends, snapshot_root(roots).hex(), total
                )
            )
            crash_point("fast.end_tagged", vm)
        else:
            ends = tuple(events.MirrorTag(**t) for t in row["end_tags"])
            changes = {
                end.resource_id: (await self.journals.difference(start, end))[0]
                for start, end in zip(starts, ends, strict=True)
            }
        applied = 0
        for tag in ends:
            applied += await self._apply(vm, disks[tag.resource_id], changes[tag.resource_id])
        crash_point("fast.applied", vm)
        await self.driver.stop(vm)
        for tag in ends:
            await self.peers.call(
                disks[tag.resource_id]["node"],
                "volume.serve_local",
                {"vm": vm, "resource_id": tag.resource_id},
            )
        await self.driver.start(vm)
        for tag in ends:
            await self.peers.call(tag.node, "mirror.close", {"mirror": tag.mirror})
        seconds = (self.ledger.now_ms() - int(row["started_at_ms"])) / 1000
        await self._append(
            events.RollbackFinished(
                self.ledger.now_ms(),
                rollback,
                vm,
                row["snapshot"],
                int(row["chunks_checked"]),
                int(row["chunks_restored"]),
                int(row["bytes_restored"]),
                seconds,
            )
        )
        return {
            "rollback": rollback,
            "vm": vm,
            "snapshot": row["snapshot"],
            "changed_chunks": sum(len(c) for c in changes.values()),
            "applied_chunks": applied,
            "seconds": seconds,
        }

    async def _end_tags(
        self, starts: list[events.MirrorTag]
    ) -> tuple[tuple[events.MirrorTag, ...], dict[str, dict[int, bytes | None]]]:
        ends = []
        changes: dict[str, dict[int, bytes | None]] = {}
        for start in starts:
            reply = await self.peers.call(start.node, "mirror.tag", {"mirror": start.mirror})
            end = events.MirrorTag(
                start.resource_id,
                start.node,
                start.mirror,
                int(reply["position"]),
                reply["head"].hex(),
            )
            changes[start.resource_id] = (await self.journals.difference(start, end))[0]
            ends.append(end)
        return tuple(ends), changes

    async def _apply(self, vm: str, disk: dict[str, Any], changes: dict[int, bytes | None]) -> int:
        """Write the difference into the business volume."""
        size, chunk_size = int(disk["size"]), int(disk["chunk_size"])
        target = {"vm": vm, "resource_id": disk["resource_id"]}
        order = sorted(changes)
        for i in range(0, len(order), APPLY_BATCH):
            batch = order[i : i + APPLY_BATCH]
            wanted = [c for c in (changes[j] for j in batch) if c is not None]
            fetched = await self.cluster.get(wanted)
            for index in batch:
                offset = index * chunk_size
                chunk = changes[index]
                if chunk is None:
                    length = min(chunk_size, size - offset)
                    await self.peers.call(
                        disk["node"], "volume.zero", {**target, "offset": offset, "length": length}
                    )
                else:
                    data = await asyncio.to_thread(self.codec.decode, chunk, fetched[chunk])
                    await self.peers.call(
                        disk["node"], "volume.write", {**target, "offset": offset, "data": data}
                    )
        await self.peers.call(disk["node"], "volume.flush", target)
        return len(order)

    async def recover(self) -> None:
        """Resume the fast rollbacks a restart interrupted (or abandon one not yet tagged)."""
        running = await self._on_ledger(self.ledger.projection.rollbacks, None, "running")
        for row in running:
            if row["mode"] != "fast":
                continue
            snap = await self.snapshots.resolve(row["snapshot"])
            if row["phase"] == "started":
                reason = "interrupted before the start tag"
                await self._abandon(row["id"], row["vm"], snap, reason)
                continue
            if row["phase"] == "mirrored":
                self._background(row["id"], row["vm"], snap, bool(row["auto"]), switch=True)
            elif row["phase"] == "ending" or (row["phase"] == "restored" and row["auto"]):
                await self.finish(row["vm"])


def _mirror_id(rollback: str, resource_id: str) -> str:
    """The mirror of one disk in a rollback."""
    return blake3.blake3(f"{rollback}\0{resource_id}".encode()).hexdigest()
