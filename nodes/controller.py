"""The controller: hosts the ledger and answers the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ledger import events
from ledger.chain import Chain
from ledger.contract import Entry
from ledger.errors import InputError, UnknownVm, VersionConflict, VmExists, VmsnapError
from ledger.service import Ledger
from ledger.tester_chain import EmbeddedChain
from ledger.vm import disk, registration
from nodes.access_api import AccessApi
from nodes.chunks import ChunkCodec
from nodes.clock import Clock, SystemClock, local_zone_name
from nodes.config import Config
from nodes.deletion import Deletion
from nodes.errors import NodeError
from nodes.fast_rollback import FastRollbacks
from nodes.ledger_api import LedgerApi
from nodes.peers import Peers, node_names
from nodes.placement import Placement
from nodes.replicated_chain import ReplicatedChain
from nodes.replication import BackupCluster
from nodes.request_args import maps, text
from nodes.retention_run import Retention
from nodes.rollback import Rollbacks
from nodes.schedule_api import ScheduleApi
from nodes.scheduler import Scheduler
from nodes.server import Handler
from nodes.snapshot_audit import verify_snapshot
from nodes.snapshots import Snapshots
from nodes.vm_driver import VmDriverSettings, open_driver

T = TypeVar("T")
RECOVERY_ATTEMPTS = 120
log = logging.getLogger("vmsnap.controller")


class Controller:
    """The controller's request handlers; every ledger call runs on one worker thread.

    The EVM and the projection are CPU and disk work: they run on a single
    thread, which also serialises appends so stream versions stay in order.
    """

    def __init__(
        self, config: Config, ledger: Ledger, name: str = "controller", clock: Clock | None = None
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.name = name
        self.clock = clock or SystemClock()
        self.started = time.time()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self.peers = Peers(config, name)
        self.placement = Placement(config, ledger, self.peers, self._run)
        self.snapshots = Snapshots(config, ledger, self.peers, self.placement, self._run)
        self.cluster = BackupCluster(
            self.peers, node_names(config, "backup"), config.topology.replicas
        )
        self.codec = ChunkCodec(config.data_key(), config.storage.compression_level)
        self.deletion = Deletion(
            ledger, self.snapshots, self.cluster, self.codec, self.snapshots.gate, self._run
        )
        self.retention = Retention(ledger, self.deletion, self._run)
        self.scheduler = Scheduler(
            ledger,
            self.snapshots,
            self.retention,
            self.clock,
            self._run,
            config.scheduler.parallel,
        )
        self.schedule_api = ScheduleApi(
            ledger,
            self.snapshots,
            self.scheduler,
            self.retention,
            self.clock,
            config.scheduler.timezone or local_zone_name(),
            self._run,
        )
        driver = open_driver(VmDriverSettings(**dataclasses.asdict(config.vm_driver)))
        self.rollbacks = Rollbacks(ledger, self.snapshots, driver, self._run)
        self.fast = FastRollbacks(
            ledger, self.snapshots, self.cluster, self.codec, driver, self._run
        )
        self._recovered = False
        self._recovery_task: asyncio.Task[None] | None = None
        self._recovery = asyncio.Lock()

    @classmethod
    async def open(
        cls, config: Config, name: str = "controller", clock: Clock | None = None
    ) -> Controller:
        """Open the ledger (deploying the contract on first start) off the event loop.

        With ``chain.replicas`` the controller is the sequencer of the ledger replicas on
        the business and backup nodes (``nodes/replicated_chain.py``).
        """
        clock = clock or SystemClock()
        settings = config.ledger_settings(name)
        wrap = None
        sequencer: list[ReplicatedChain] = []
        if config.chain.replicas and config.chain.backend == "eth-tester":
            loop = asyncio.get_running_loop()
            names = node_names(config, "business") + node_names(config, "backup")

            def wrap(chain: Chain) -> Chain:
                assert isinstance(chain, EmbeddedChain)
                replicated = ReplicatedChain(chain, Peers(config, name), names, loop)
                replicated.patience = config.network.start_timeout
                sequencer.append(replicated)
                return replicated

        ledger = await asyncio.to_thread(Ledger.open, settings, clock.timestamp, wrap)
        for replicated in sequencer:
            replicated.patience = 0.0
        return cls(config, ledger, name, clock)

    async def close(self) -> None:
        """Finish pending ledger work and close the ledger."""
        if self._recovery_task is not None:
            self._recovery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery_task
        await self.scheduler.close()
        await self.snapshots.close()
        await self.peers.close()
        if isinstance(self.ledger.chain, ReplicatedChain):
            await self.ledger.chain.peers.close()
        await self._run(self.ledger.close)
        self._worker.shutdown(wait=True)

    def handlers(self) -> dict[str, Handler]:
        """The operations this node serves, by name."""
        return {
            "node.status": self.status,
            "vm.register": self.register_vm,
            "vm.list": self.list_vms,
            "vm.show": self.show_vm,
            "disk.locate": self.locate_disk,
            "snapshot.create": self.create_snapshot,
            "snapshot.list": self.list_snapshots,
            "snapshot.progress": self.snapshot_progress,
            "snapshot.show": self.show_snapshot,
            "snapshot.verify": self.verify_snapshot,
            "audit.snapshot": self.audit_snapshot,
            "snapshot.delete": self.delete_snapshot,
            "backup.gc": self.collect_garbage,
            "rollback.start": self.start_rollback,
            "rollback.list": self.list_rollbacks,
            "rollback.status": self.rollback_status,
            "rollback.finish": self.finish_rollback,
            "rollback.diff": self.rollback_diff,
            **self.schedule_api.handlers(),
            **LedgerApi(self.ledger, self.peers, self._run, self.name).handlers(),
            **AccessApi(self.config, self.ledger, self._run).handlers(),
        }

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Report the node's state and the ledger head."""
        head = await self._run(self.ledger.head)
        return {
            "name": self.name,
            "role": "controller",
            "pid": os.getpid(),
            "uptime": time.time() - self.started,
            "ledger": head,
            "scheduler": self.scheduler.status(),
        }

    async def register_vm(self, args: dict[str, Any]) -> dict[str, Any]:
        """Record a VmRegistered event; refuse a name already taken."""
        disks = tuple(_disk(d) for d in maps(args, "disks"))
        event = registration(
            text(args, "name"), text(args, "type"), text(args, "ip"), disks, self.ledger.now_ms()
        )
        result = await self._run(self._register, event)
        try:
            result["vm"] = await self.placement.place(event.vm)
        except NodeError as err:
            result["placement_pending"] = str(err)
        return result

    def _register(self, event: events.VmRegistered) -> dict[str, Any]:
        if self.ledger.projection.vm(event.vm) is not None:
            raise VmExists(event.vm)
        try:
            (record,) = self.ledger.append([Entry(event, 0)])
        except VersionConflict as err:
            raise VmExists(event.vm) from err
        vm = self.ledger.projection.vm(event.vm)
        assert vm is not None
        return {"vm": vm, "seq": record.seq, "tx_hash": "0x" + record.tx_hash.hex()}

    async def locate_disk(self, args: dict[str, Any]) -> dict[str, Any]:
        """Where a VM disk is served: node, RPC address, NBD URL, size."""
        return await self.placement.locate(text(args, "vm"), text(args, "resource_id"))

    def start_recovery(self) -> None:
        """Finish or undo, in the background, the workflows a crash interrupted; then schedule."""
        self._recovery_task = asyncio.create_task(self._recover_when_ready())

    async def _recover_when_ready(self) -> None:
        for _attempt in range(RECOVERY_ATTEMPTS):
            try:
                await self._recover()
            except VmsnapError as err:
                log.info("recovery waits for the network: %s", err)
                await asyncio.sleep(1.0)
            else:
                break
        else:
            log.warning("recovery gave up; scheduled snapshots run from now on")
        await self.scheduler.start()

    async def begin(self) -> None:
        """Recover now (raising if the network is not there), then start the scheduler."""
        await self._recover()
        await self.scheduler.start()

    async def _recover(self) -> None:
        async with self._recovery:
            if not self._recovered:
                await self.snapshots.recover()
                await self.rollbacks.recover()
                await self.fast.recover()
                self._recovered = True

    async def create_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run the snapshot workflow for a VM; answer once it is committed and released."""
        await self._recover()
        disks = args.get("disks") or None
        if disks is not None and not (
            isinstance(disks, list) and all(isinstance(d, str) for d in disks)
        ):
            raise InputError("disks must be a list of resource ids")
        return {"snapshot": await self.snapshots.create(text(args, "vm"), disks)}

    async def snapshot_progress(self, args: dict[str, Any]) -> dict[str, Any]:
        """How far the VM's in-flight snapshot is."""
        return await self.snapshots.progress(text(args, "vm"))

    async def list_snapshots(self, args: dict[str, Any]) -> dict[str, Any]:
        """Snapshots, optionally of one VM."""
        vm = args.get("vm")
        if vm is not None and await self._run(self.ledger.projection.vm, str(vm)) is None:
            raise UnknownVm(str(vm))
        found = await self._run(self.ledger.projection.snapshots, vm)
        return {"snapshots": found}

    async def show_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """One snapshot by id or unique id prefix."""
        return {"snapshot": await self.snapshots.resolve(text(args, "id"))}

    async def verify_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check a snapshot from the root on chain down to every chunk."""
        snap = await self.snapshots.resolve(text(args, "id"))
        record = await self._run(self.ledger.contract.snapshot, bytes.fromhex(snap["id"]))
        audit = await verify_snapshot(snap, record, self.cluster, self.codec)
        return audit.plain()

    async def audit_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """The contract's record of a snapshot, then the backup cluster's data checked on it."""
        snap = await self.snapshots.resolve(text(args, "id"))
        record = await self._run(self.ledger.contract.snapshot, bytes.fromhex(snap["id"]))
        contract = {
            "snapshot": snap["id"],
            "vm_stream": "0x" + record.vm_stream.hex(),
            "vm_stream_matches": record.vm_stream == events.stream_id(events.vm_stream(snap["vm"])),
            "root": "0x" + record.root.hex(),
            "status": record.status.name.lower(),
            "previous": "0x" + record.previous.hex(),
            "seq": record.seq,
            "updated_at": record.updated_at,
            "updated_by": record.updated_by,
        }
        audit = await verify_snapshot(snap, record, self.cluster, self.codec)
        if not contract["vm_stream_matches"]:
            audit.problems.append(
                f"the contract files the snapshot under another VM than {snap['vm']}"
            )
        return {"contract": contract, "data": audit.plain()}

    async def delete_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """Delete a snapshot from its three places, then collect garbage."""
        await self._recover()
        return await self.deletion.delete(text(args, "id"), gc=args.get("gc", True) is not False)

    async def collect_garbage(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove chunks no live snapshot references."""
        return await self.deletion.collect()

    async def start_rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        """Roll a VM back to a snapshot: normal, or fast (on a mirror at once)."""
        await self._recover()
        vm, snapshot = text(args, "vm"), text(args, "snapshot")
        if args.get("fast"):
            return await self.fast.start(vm, snapshot, bool(args.get("auto", False)))
        return await self.rollbacks.start(vm, snapshot)

    async def rollback_status(self, args: dict[str, Any]) -> dict[str, Any]:
        """The VM's rollback in progress (or its last): phase, restore progress, journals."""
        vm = text(args, "vm")
        if await self._run(self.ledger.projection.vm, vm) is None:
            raise UnknownVm(vm)
        return {"rollback": await self.fast.status(vm)}

    async def finish_rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        """End a fast rollback: end tag, difference on chain, back on business storage."""
        vm = text(args, "vm")
        if await self._run(self.ledger.projection.vm, vm) is None:
            raise UnknownVm(vm)
        await self._recover()
        return await self.fast.finish(vm)

    async def rollback_diff(self, args: dict[str, Any]) -> dict[str, Any]:
        """Recompute a fast rollback's difference from its journal and compare with the chain."""
        return await self.fast.journals.audit(text(args, "ref"))

    async def list_rollbacks(self, args: dict[str, Any]) -> dict[str, Any]:
        """Rollbacks, optionally of one VM."""
        vm = args.get("vm")
        return {"rollbacks": await self._run(self.ledger.projection.rollbacks, vm)}

    async def list_vms(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every registered VM."""
        return {"vms": await self._run(self.ledger.projection.vms)}

    async def show_vm(self, args: dict[str, Any]) -> dict[str, Any]:
        """One VM, with its history."""
        name = text(args, "name")
        vm = await self._run(self.ledger.projection.vm, name)
        if vm is None:
            raise UnknownVm(name)
        history = await self._run(self.ledger.projection.events, events.vm_stream(name))
        return {"vm": vm, "events": history}


def _disk(value: dict[str, Any]) -> events.Disk:
    role, resource_id, size = value.get("role"), value.get("resource_id"), value.get("size")
    if not isinstance(role, str) or not isinstance(resource_id, str) or not isinstance(size, int):
        raise InputError("a disk needs a role, a resource_id and an integer size")
    return disk(role, resource_id, size)
