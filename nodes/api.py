"""The controller's operations as functions: what the CLI calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from ledger.events import Disk
from nodes.client import NodeClient, call_sync
from nodes.config import Config
from nodes.network import controller

SNAPSHOT_TIMEOUT = 6 * 3600.0
POLL = 0.25


class ControllerApi:
    """Calls to the running controller of a deployment."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def _call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        run = controller(self.config)
        return call_sync(
            run.host,
            run.port,
            self.config.secret(),
            op,
            args or {},
            peer=run.name,
            timeout=self.config.wire.timeout,
        )

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
        self, vm: str, disks: Sequence[str], progress: Callable[[int, int | None], None]
    ) -> dict[str, Any]:
        """Run a snapshot, reporting (bytes done, bytes expected) while it runs."""
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

    def rollback(self, vm: str, snapshot: str) -> dict[str, Any]:
        """Roll a VM back to a snapshot (normal rollback)."""
        run = controller(self.config)
        return call_sync(
            run.host,
            run.port,
            self.config.secret(),
            "rollback.start",
            {"vm": vm, "snapshot": snapshot},
            peer=run.name,
            timeout=SNAPSHOT_TIMEOUT,
        )

    def rollbacks(self, vm: str | None = None) -> list[dict[str, Any]]:
        """Rollbacks, optionally of one VM."""
        return list(self._call("rollback.list", {} if vm is None else {"vm": vm})["rollbacks"])

    def apply_retention(self, vm: str, rules: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        """Apply keep-* rules to a VM's snapshots (or show what they would do)."""
        run = controller(self.config)
        return call_sync(
            run.host,
            run.port,
            self.config.secret(),
            "retention.apply",
            {"vm": vm, **rules, "dry_run": dry_run},
            peer=run.name,
            timeout=SNAPSHOT_TIMEOUT,
        )

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

    def head(self) -> dict[str, Any]:
        """The ledger head."""
        return self._call("ledger.head")

    def verify(self) -> dict[str, Any]:
        """Audit the ledger."""
        return self._call("ledger.verify")

    def replay(self) -> dict[str, Any]:
        """Rebuild the projection."""
        return self._call("ledger.replay")
