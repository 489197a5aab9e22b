"""The controller's operations as functions: what the CLI calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nodes.client import NodeClient, call_sync
from nodes.config import Config
from nodes.network import controller

if TYPE_CHECKING:
    from ledger.events import Disk

SNAPSHOT_TIMEOUT = 6 * 3600.0
POLL = 0.25


class ControllerApi:
    """Calls to the running controller of a deployment."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def _call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        run = controller(self.config)
        return call_sync(
            run.host,
            run.port,
            self.config.secret(),
            op,
            args or {},
            peer=run.name,
            timeout=timeout or self.config.wire.timeout,
        )

    def status(self) -> dict[str, Any]:
        """The controller's own status: uptime, ledger head, scheduler."""
        return self._call("node.status")

    def register_vm(
        self, name: str, vm_type: str, ip: str, disks: Sequence[Disk]
    ) -> dict[str, Any]:
        """Register a VM and its disks."""
        wire_disks = [{"role": d.role, "resource_id": d.resource_id, "size": d.size} for d in disks]
        return self._call(
            "vm.register", {"name": name, "type": vm_type, "ip": ip, "disks": wire_disks}
        )

    def locate_disk(self, vm: str, resource_id: str) -> dict[str, Any]:
        """Where a disk is served (placing it first if needed)."""
        return self._call("disk.locate", {"vm": vm, "resource_id": resource_id})

    def create_snapshot(
        self,
        vm: str,
        disks: Sequence[str],
        progress: Callable[[int, int | None], None] | None = None,
    ) -> dict[str, Any]:
        """Run a snapshot, reporting (bytes done, bytes expected) while it runs if asked."""
        if progress is None:
            args = {"vm": vm, "disks": list(disks)}
            return dict(self._call("snapshot.create", args, SNAPSHOT_TIMEOUT)["snapshot"])
        return dict(asyncio.run(self._snapshot_with_progress(vm, list(disks), progress)))

    async def _snapshot_with_progress(
        self, vm: str, disks: list[str], progress: Callable[[int, int | None], None]
    ) -> dict[str, Any]:
        run = controller(self.config)
        secret = self.config.secret()
        async with (
            NodeClient(run.host, run.port, secret, peer=run.name, timeout=SNAPSHOT_TIMEOUT) as work,
            NodeClient(run.host, run.port, secret, peer=run.name) as watch,
        ):
            task = asyncio.create_task(work.call("snapshot.create", {"vm": vm, "disks": disks}))
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=POLL)
                    if not task.done():
                        state = await watch.call("snapshot.progress", {"vm": vm})
                        progress(int(state["done"]), state["total"])
            finally:
                if not task.done():
                    task.cancel()
            reply = await task
        return dict(reply["snapshot"])

    def snapshots(self, vm: str | None = None) -> list[dict[str, Any]]:
        """Snapshots, optionally of one VM."""
        args = {} if vm is None else {"vm": vm}
        return list(self._call("snapshot.list", args)["snapshots"])

    def snapshot(self, ref: str) -> dict[str, Any]:
        """One snapshot by id or unique prefix."""
        return dict(self._call("snapshot.show", {"id": ref})["snapshot"])

    def verify_snapshot(self, ref: str) -> dict[str, Any]:
        """Audit one snapshot against the contract, its manifests and chunks."""
        run = controller(self.config)
        return call_sync(
            run.host,
            run.port,
            self.config.secret(),
            "snapshot.verify",
            {"id": ref},
            peer=run.name,
            timeout=SNAPSHOT_TIMEOUT,
        )

    def audit_snapshot(self, ref: str) -> dict[str, Any]:
        """The contract's record of a snapshot, and the data checked against it."""
        return self._call("audit.snapshot", {"id": ref}, SNAPSHOT_TIMEOUT)

    def delete_snapshot(self, ref: str, gc: bool = True) -> dict[str, Any]:
        """Delete a snapshot (and collect garbage)."""
        run = controller(self.config)
        return call_sync(
            run.host,
            run.port,
            self.config.secret(),
            "snapshot.delete",
            {"id": ref, "gc": gc},
            peer=run.name,
            timeout=SNAPSHOT_TIMEOUT,
        )

    def collect_garbage(self) -> dict[str, Any]:
        """Remove unreferenced chunks from the backup cluster."""
        run = controller(self.config)
        return call_sync(
            run.host,
            run.port,
            self.config.secret(),
            "backup.gc",
            {},
            peer=run.name,
            timeout=SNAPSHOT_TIMEOUT,
        )

    def rollback(
        self, vm: str, snapshot: str, fast: bool = False, auto: bool = False
    ) -> dict[str, Any]:
        """Roll a VM back to a snapshot: normal, or fast (answers once the VM runs on mirrors)."""
        args = {"vm": vm, "snapshot": snapshot, "fast": fast, "auto": auto}
        return self._call("rollback.start", args, SNAPSHOT_TIMEOUT)

    def rollback_status(self, vm: str) -> dict[str, Any]:
        """The VM's rollback in progress, or its last one."""
        return dict(self._call("rollback.status", {"vm": vm})["rollback"])

    def finish_rollback(self, vm: str) -> dict[str, Any]:
        """End a fast rollback."""
        return self._call("rollback.finish", {"vm": vm}, SNAPSHOT_TIMEOUT)

    def rollback_diff(self, ref: str) -> dict[str, Any]:
        """Audit a fast rollback's difference against the chain."""
        return self._call("rollback.diff", {"ref": ref}, SNAPSHOT_TIMEOUT)

    def rollbacks(self, vm: str | None = None) -> list[dict[str, Any]]:
        """Rollbacks, optionally of one VM."""
        return list(self._call("rollback.list", {} if vm is None else {"vm": vm})["rollbacks"])

    def apply_retention(self, vm: str, rules: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        """Apply keep-* rules (or the VM's stored ones) to its snapshots, or show what they do."""
        return self._call(
            "retention.apply", {"vm": vm, **rules, "dry_run": dry_run}, SNAPSHOT_TIMEOUT
        )

    def set_retention(self, vm: str, rules: dict[str, Any]) -> dict[str, Any]:
        """Set the VM's own keep-* rules."""
        return self._call("retention.set", {"vm": vm, **rules})

    def show_retention(self, vm: str) -> dict[str, Any]:
        """The VM's own rules and each schedule's."""
        return self._call("retention.show", {"vm": vm})

    def clear_retention(self, vm: str) -> dict[str, Any]:
        """Remove the VM's own rules."""
        return self._call("retention.clear", {"vm": vm})

    def set_schedule(self, args: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a schedule."""
        return dict(self._call("schedule.set", args)["schedule"])

    def schedules(self, vm: str | None = None) -> list[dict[str, Any]]:
        """Schedules with their next runs, optionally of one VM."""
        return list(self._call("schedule.list", {} if vm is None else {"vm": vm})["schedules"])

    def clear_schedule(self, vm: str, name: str | None) -> list[str]:
        """Remove one schedule of a VM or all of them; return the names removed."""
        args = {"vm": vm} if name is None else {"vm": vm, "name": name}
        return list(self._call("schedule.clear", args)["cleared"])

    def run_schedule(self, vm: str, name: str | None) -> dict[str, Any]:
        """Run a schedule now; return the recorded run."""
        args = {"vm": vm} if name is None else {"vm": vm, "name": name}
        return dict(self._call("schedule.run_now", args, SNAPSHOT_TIMEOUT)["run"])

    def schedule_runs(
        self, vm: str | None, name: str | None, limit: int | None
    ) -> list[dict[str, Any]]:
        """Recorded runs, newest last."""
        args = {"vm": vm, "name": name, "limit": limit}
        return list(self._call("schedule.runs", {k: v for k, v in args.items() if v})["runs"])

    def protect(self, ref: str, protected: bool) -> dict[str, Any]:
        """Protect a snapshot from retention and deletion, or lift it."""
        return self._call("snapshot.protect", {"id": ref, "protected": protected})

    def vms(self) -> list[dict[str, Any]]:
        """Every registered VM."""
        return list(self._call("vm.list")["vms"])

    def vm(self, name: str) -> dict[str, Any]:
        """One VM and its history."""
        return self._call("vm.show", {"name": name})

    def log(self, vm: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Ledger events in order."""
        args: dict[str, Any] = {}
        if vm is not None:
            args["vm"] = vm
        if limit is not None:
            args["limit"] = limit
        return list(self._call("ledger.log", args)["events"])

    def ledger_nodes(self) -> dict[str, Any]:
        """The sequencer and every ledger replica."""
        return self._call("ledger.nodes")

    def head(self) -> dict[str, Any]:
        """The ledger head."""
        return self._call("ledger.head")

    def verify(self, node: str | None = None) -> dict[str, Any]:
        """Audit the ledger (or, with `node`, that node's replica of it)."""
        return self._call("ledger.verify", {} if node is None else {"node": node})

    def replay(self) -> dict[str, Any]:
        """Rebuild the projection."""
        return self._call("ledger.replay")

    def access(self) -> list[dict[str, Any]]:
        """Every account ever given roles on the ledger contract, with its roles now."""
        return list(self._call("access.list")["accounts"])

    def grant(self, account: str, role: str) -> dict[str, Any]:
        """Give `account` the roles of `role` (signed by the admin key)."""
        return self._call("access.grant", {"account": account, "role": role})

    def revoke(self, account: str) -> dict[str, Any]:
        """Take every role from `account` (signed by the admin key)."""
        return self._call("access.revoke", {"account": account})
