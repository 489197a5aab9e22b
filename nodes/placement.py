"""Where each VM disk lives: pick a business node, create the volume, record the placement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ledger import events
from ledger.contract import Entry
from ledger.errors import NotFound, UnknownVm
from ledger.service import Ledger
from nodes.config import Config
from nodes.peers import Peers, node_names
from nodes.replication import placement

T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]


class UnknownDisk(NotFound):
    """The VM has no disk with that resource id."""

    def __init__(self, vm: str, resource_id: str) -> None:
        super().__init__(f"VM {vm!r} has no disk {resource_id!r}")


class Placement:
    """Places disks on business nodes by rendezvous hashing of ``VM/RESOURCE_ID``.

    A placement is recorded only after the volume exists, as a ``DiskPlaced``
    event; creating a volume is idempotent, so a placement interrupted by a
    crash is simply done again the next time the disk is needed.
    """

    def __init__(self, config: Config, ledger: Ledger, peers: Peers, on_ledger: Runner) -> None:
        self.config = config
        self.ledger = ledger
        self.peers = peers
        self._on_ledger = on_ledger

    def choose(self, vm: str, resource_id: str) -> str:
        """The business node a new disk goes to."""
        nodes = node_names(self.config, "business")
        return placement(f"{vm}/{resource_id}".encode(), nodes, 1)[0]

    async def place(self, vm: str) -> dict[str, Any]:
        """Create and record the volumes of every unplaced disk of `vm`; return the VM."""
        shown = await self._on_ledger(self.ledger.projection.vm, vm)
        if shown is None:
            raise UnknownVm(vm)
        unplaced = [d for d in shown["disks"] if d["node"] is None]
        if not unplaced:
            return dict(shown)
        placed = []
        for d in unplaced:
            node = self.choose(vm, d["resource_id"])
            volume = await self.peers.call(
                node,
                "volume.create",
                {
                    "vm": vm,
                    "resource_id": d["resource_id"],
                    "size": d["size"],
                    "chunk_size": self.config.storage.chunk_size,
                },
            )
            placed.append((d["resource_id"], node, int(volume["chunk_size"])))
        await self._on_ledger(self._record, vm, placed)
        refreshed = await self._on_ledger(self.ledger.projection.vm, vm)
        return dict(refreshed)

    def _record(self, vm: str, placed: list[tuple[str, str, int]]) -> None:
        version = self.ledger.projection.stream_version(events.vm_stream(vm))
        now = self.ledger.now_ms()
        entries = [
            Entry(events.DiskPlaced(now, vm, resource_id, node, chunk), version + i)
            for i, (resource_id, node, chunk) in enumerate(placed)
        ]
        self.ledger.append(entries)

    async def locate(self, vm: str, resource_id: str) -> dict[str, Any]:
        """The disk's node, its addresses and geometry, placing it first if needed."""
        shown = await self.place(vm)
        for d in shown["disks"]:
            if d["resource_id"] == resource_id:
                run = self.peers.runfile(d["node"])
                return {
                    "vm": vm,
                    "resource_id": resource_id,
                    "node": d["node"],
                    "size": d["size"],
                    "chunk_size": d["chunk_size"],
                    "host": run.host,
                    "port": run.port,
                    "url": f"nbd://{self.config.nbd.host}:{run.nbd_port}/{vm}/{resource_id}",
                    "tls": bool(self.config.nbd.tls_cert),
                }
        raise UnknownDisk(vm, resource_id)
