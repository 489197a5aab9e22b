"""Normal rollback (the seed's [0064]): stop the VM, restore what differs, restart it."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import blake3

from ledger import events
from ledger.contract import Entry
from ledger.errors import Conflict, InputError, VmsnapError
from ledger.service import Ledger
from nodes.crashpoints import crash_point
from nodes.snapshots import Snapshots
from nodes.vm_driver import VmDriver

Runner = Callable[..., Awaitable[Any]]
log = logging.getLogger("vmsnap.rollback")
RESTORE_TIMEOUT = 6 * 3600.0


async def restore_disks(snapshots: Snapshots, vm: str, snap: dict[str, Any]) -> dict[str, int]:
    """Make each of the VM's disks equal the snapshot through the transfer node; sum the work."""
    totals = {"chunks_checked": 0, "chunks_restored": 0, "bytes_restored": 0}
    for disk in await snapshots.disks_of(snap):
        detail = next(d for d in snap["disk_details"] if d["resource_id"] == disk["resource_id"])
        reply = await snapshots.peers.call(
            snapshots.transfer_node(vm),
            "transfer.restore",
            {
                "node": disk["node"],
                "vm": vm,
                "resource_id": disk["resource_id"],
                "manifest": detail["manifest"],
            },
            timeout=RESTORE_TIMEOUT,
        )
        for key in totals:
            totals[key] += int(reply[key])
    return totals


class RollbackInterrupted(VmsnapError):
    """A rollback stopped half way; it is resumed from the ledger's record."""

    def __init__(self, rollback: str, reason: str) -> None:
        super().__init__(
            f"rollback {rollback[:12]} interrupted: {reason}; "
            "it resumes when the controller restarts, or run the same command again"
        )


class Rollbacks:
    """Roll a VM back to a committed snapshot, through the transfer node.

    ``RollbackStarted`` goes on chain first; the VM is stopped through its
    driver; each disk is compared chunk by chunk with the snapshot's manifest
    and only the differing chunks are written back (holes become holes); the
    VM is restarted; ``RollbackFinished`` records what was restored. Restoring
    is idempotent, so a rollback interrupted anywhere is finished by running
    it again, which ``recover`` does after a controller restart.
    """

    def __init__(
        self, ledger: Ledger, snapshots: Snapshots, driver: VmDriver, on_ledger: Runner
    ) -> None:
        self.ledger = ledger
        self.snapshots = snapshots
        self.driver = driver
        self._on_ledger = on_ledger

    async def start(self, vm: str, ref: str) -> dict[str, Any]:
        """Roll `vm` back to snapshot `ref`; answer when it runs on the restored disks."""
        snap = await self.snapshots.resolve(ref)
        if snap["vm"] != vm:
            raise InputError(f"snapshot {snap['id'][:12]} is of VM {snap['vm']!r}, not {vm!r}")
        if snap["status"] != "committed":
            raise InputError(f"snapshot {snap['id'][:12]} is {snap['status']}, not committed")
        running = await self._on_ledger(self.ledger.projection.rollbacks, vm, "running")
        if running and running[0]["mode"] != "normal":
            raise Conflict(
                f"VM {vm!r} has a fast rollback in progress ({running[0]['id'][:12]}); "
                f"finish it first (vmsnap rollback finish {vm})"
            )
        if running and running[0]["snapshot"] == snap["id"]:
            rollback = running[0]["id"]
        else:
            await self.snapshots.check_idle(vm)
            rollback = blake3.blake3(f"{vm}\0{snap['id']}\0{time.time_ns()}".encode()).hexdigest()
            await self._append(
                events.RollbackStarted(self.ledger.now_ms(), rollback, vm, snap["id"], "normal")
            )
        with self.snapshots.activity.claim(vm, "rollback", rollback):
            return await self._run(rollback, vm, snap)

    async def _append(self, event: events.Event) -> None:
        version = await self._on_ledger(self.ledger.projection.stream_version, event.stream)
        await self._on_ledger(self.ledger.append, [Entry(event, version)])

    async def _run(self, rollback: str, vm: str, snap: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        crash_point("rollback.started", vm)
        try:
            await self.driver.stop(vm)
            totals = await restore_disks(self.snapshots, vm, snap)
            crash_point("rollback.restored", vm)
            await self.driver.start(vm)
        except VmsnapError as err:
            raise RollbackInterrupted(rollback, str(err)) from err
        seconds = time.monotonic() - started
        await self._append(
            events.RollbackFinished(
                self.ledger.now_ms(), rollback, vm, snap["id"], seconds=seconds, **totals
            )
        )
        return {
            "rollback": rollback,
            "vm": vm,
            "snapshot": snap["id"],
            "seconds": seconds,
            **totals,
        }

    async def recover(self) -> None:
        """Finish every rollback a crash interrupted."""
        running = await self._on_ledger(self.ledger.projection.rollbacks, None, "running")
        for row in running:
            if row["mode"] != "normal":
                continue
            snap = await self.snapshots.resolve(row["snapshot"])
            log.info("resuming rollback %s of %s", row["id"][:12], row["vm"])
            with self.snapshots.activity.claim(row["vm"], "rollback", row["id"]):
                await self._run(row["id"], row["vm"], snap)
