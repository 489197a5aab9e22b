"""The business node: VM disks as volumes, served over NBD, frozen for snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.errors import InputError, VmsnapError
from ledger.vm import check_disk_size, check_resource_id, check_vm_name
from nodes.chunks import ChunkCodec
from nodes.config import NBD_PORT_OFFSET, Config
from nodes.errors import VolumeError
from nodes.nbd import NbdServer
from nodes.nbd_tls import check_exposure
from nodes.peers import Peers
from nodes.request_args import integer, text
from nodes.server import Handler
from nodes.stale_views import release_stale_views
from nodes.switch import RemoteMirror, Switch
from nodes.view_server import ViewServer
from nodes.view_service import ViewService
from nodes.volume import Volume
from nodes.volume_names import VolumeNotFound, export_name

if TYPE_CHECKING:
    from nodes.ledger_replica import LedgerReplica

REDIRECT = "redirect.json"

MAX_IO = 4 * 1024 * 1024
MIN_CHUNK = 4096
MAX_CHUNK = 64 * 1024
CHECKPOINT_EVERY = 2.0
"""Seconds between checkpoints of the volumes' metadata logs."""
SWITCH_INTERVAL = 0.0005
"""How long a thread may hold the GIL while another waits for it (Python's default: 5 ms)."""


class Business:
    """Volumes under ``volumes/VM/RESOURCE_ID/``, each exported over NBD by name."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.root = config.node_dir(name) / "volumes"
        self.root.mkdir(parents=True, exist_ok=True)
        self.codec = ChunkCodec(config.data_key(), config.storage.compression_level)
        self.views = ViewService(self._volume, self.codec)
        self.peers = Peers(config, name)
        self.replica: LedgerReplica | None = None
        if config.chain.replicas and config.chain.backend == "eth-tester":
            # The EVM and eth-account load only where a replica runs: node start-up stays quick.
            from nodes.ledger_replica import LedgerReplica

            self.replica = LedgerReplica(config, name)
        self.volumes: dict[str, Volume] = {}
        self.switches: dict[str, Switch] = {}
        for folder in sorted(p.parent for p in self.root.glob("*/*/meta.sqlite")):
            export = f"{folder.parent.name}/{folder.name}"
            self.volumes[export] = Volume.open(folder)
            self.switches[export] = Switch(self._served(self.volumes[export]))
        port = config.network.base_port + NBD_PORT_OFFSET + int(name.rsplit("-", 1)[1])
        tls = config.nbd_tls()
        check_exposure(config.nbd.host, tls is not None, config.nbd.allow_plaintext)
        self.nbd = NbdServer(
            dict(self.switches),
            host=config.nbd.host,
            port=port if config.network.base_port else 0,
            tls=tls,
        )
        self.nbd_port = 0
        self.view_server: ViewServer | None = None
        self._cleanup: asyncio.Task[int] | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    @property
    def view_port(self) -> int:
        """The port of the node's view server (0: it runs none)."""
        return self.view_server.port if self.view_server is not None else 0

    @classmethod
    async def open(cls, config: Config, name: str) -> Business:
        """Open every volume and start the NBD server."""
        # A thread reading chunks for a snapshot must not keep a VM's request waiting long.
        sys.setswitchinterval(SWITCH_INTERVAL)
        node = cls(config, name)
        node.view_server = ViewServer(config, name)
        node.view_server.start()
        _host, node.nbd_port = await node.nbd.start()
        node._checkpoints = asyncio.create_task(node._checkpoint_volumes())
        if node.replica is not None:
            node.replica.start_catch_up(node.peers)
        return node

    def _served(self, volume: Volume) -> Volume | RemoteMirror:
        """What a volume's export serves: a mirror while a fast rollback redirects it."""
        redirect = volume.folder / REDIRECT
        if not redirect.exists():
            return volume
        target = json.loads(redirect.read_text())
        return RemoteMirror(self.peers, target["node"], target["mirror"], volume.size)

    def start_recovery(self) -> None:
        """Release, in the background, the views of snapshots finished while this node was down."""
        self._cleanup = asyncio.create_task(release_stale_views(self.volumes, self.peers))

    async def _checkpoint_volumes(self) -> None:
        """Fold the volumes' metadata logs into their databases, away from the write path."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            for volume in list(self.volumes.values()):
                with contextlib.suppress(VolumeError):
                    await asyncio.to_thread(volume.checkpoint)

    async def close(self) -> None:
        """Stop serving, make writes durable and close the volumes."""
        for task in (self._cleanup, self._checkpoints):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, VmsnapError):
                    await task
        if self.view_server is not None:
            await self.view_server.close()
        await self.nbd.close()
        await self.peers.close()
        if self.replica is not None:
            self.replica.close()
        for volume in self.volumes.values():
            volume.sync()
            volume.close()

    def handlers(self) -> dict[str, Handler]:
        """The operations this node serves."""
        return {
            "node.status": self.status,
            "volume.create": self.create,
            "volume.delete": self.delete,
            "volume.list": self.list_volumes,
            "volume.read": self.read,
            "volume.write": self.write,
            "volume.zero": self.zero,
            "volume.extents": self.extents,
            "volume.flush": self.flush,
            **self.views.handlers(),
            "volume.redirect": self.redirect,
            "volume.hold": self.hold,
            "volume.serve_local": self.serve_local,
            **(self.replica.handlers() if self.replica is not None else {}),
        }

    def _volume(self, args: dict[str, Any]) -> tuple[str, Volume]:
        name = export_name(text(args, "vm"), text(args, "resource_id"))
        volume = self.volumes.get(name)
        if volume is None:
            raise VolumeNotFound(name)
        return name, volume

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Role, volume count, bytes allocated."""
        allocated = sum(_allocated(v.folder) for v in self.volumes.values())
        return {
            "name": self.name,
            "role": "business",
            "pid": os.getpid(),
            "nbd_port": self.nbd_port,
            "view_port": self.view_port,
            "view_server_pid": self.view_server.pid if self.view_server is not None else None,
            "volumes": len(self.volumes),
            "bytes_allocated": allocated,
            "bytes_provisioned": sum(v.size for v in self.volumes.values()),
        }

    async def create(self, args: dict[str, Any]) -> dict[str, Any]:
        """Create the volume of a VM disk (idempotent for the same size)."""
        vm = check_vm_name(text(args, "vm"))
        resource_id = check_resource_id(text(args, "resource_id"))
        size = check_disk_size(resource_id, integer(args, "size"))
        name = export_name(vm, resource_id)
        volume = self.volumes.get(name)
        if volume is None:
            chunk = integer(args, "chunk_size", self.config.storage.chunk_size)
            if not MIN_CHUNK <= chunk <= MAX_CHUNK or chunk & (chunk - 1):
                raise InputError(
                    f"chunk_size must be a power of two from {MIN_CHUNK} to {MAX_CHUNK}"
                )
            volume = await asyncio.to_thread(
                Volume.create, self.root / vm / resource_id, size, chunk
            )
            self.volumes[name] = volume
            self.switches[name] = Switch(volume)
            self.nbd.add_export(name, self.switches[name])
        elif volume.size != size:
            raise InputError(f"volume {name} exists with size {volume.size}, not {size}")
        return self._describe(name, volume)

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove a volume and its files."""
        name, volume = self._volume(args)
        self.nbd.remove_export(name)
        del self.volumes[name]
        del self.switches[name]
        volume.close()
        await asyncio.to_thread(shutil.rmtree, volume.folder)
        return {"deleted": name}

    async def list_volumes(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every volume with its geometry and views."""
        return {"volumes": [self._describe(n, v) for n, v in sorted(self.volumes.items())]}

    def _describe(self, name: str, volume: Volume) -> dict[str, Any]:
        vm, resource_id = name.split("/", 1)
        return {
            "vm": vm,
            "resource_id": resource_id,
            "size": volume.size,
            "chunk_size": volume.chunk_size,
            "node": self.name,
            "url": f"nbd://{self.config.nbd.host}:{self.nbd_port}/{name}",
            "tls": self.nbd.tls is not None,
            "views": [v.name for v in volume.views()],
            "mirror": _redirect(volume).get("mirror"),
            "dirty_chunks": len(volume.dirty_chunks()),
            "bytes_allocated": _allocated(volume.folder),
        }

    async def read(self, args: dict[str, Any]) -> dict[str, Any]:
        """Read up to 4 MiB of the live volume."""
        _name, volume = self._volume(args)
        offset, length = integer(args, "offset"), integer(args, "length")
        _range(volume, offset, length)
        return {"data": volume.read_live(offset, length)}

    async def write(self, args: dict[str, Any]) -> dict[str, Any]:
        """Write up to 4 MiB into the live volume."""
        _name, volume = self._volume(args)
        data = args.get("data")
        if not isinstance(data, bytes):
            raise InputError("missing data")
        offset = integer(args, "offset")
        _range(volume, offset, len(data))
        volume.write_live(offset, data)
        return {"written": len(data)}

    async def zero(self, args: dict[str, Any]) -> dict[str, Any]:
        """Make a range read as zeros (whole chunks become holes)."""
        _name, volume = self._volume(args)
        offset, length = integer(args, "offset"), integer(args, "length")
        if offset + length > volume.size:
            raise InputError(f"range {offset}+{length} is outside the volume")
        volume.zero_live(offset, length)
        return {"zeroed": length}

    async def extents(self, args: dict[str, Any]) -> dict[str, Any]:
        """Allocated and hole extents of a range, as [length, flags] pairs."""
        _name, volume = self._volume(args)
        offset = integer(args, "offset")
        if offset > volume.size:
            raise InputError(f"offset {offset} is beyond the volume's {volume.size} bytes")
        length = min(integer(args, "length"), volume.size - offset)
        found = await volume.block_status(offset, length)
        return {"extents": [[e.length, e.flags] for e in found]}

    async def flush(self, args: dict[str, Any]) -> dict[str, Any]:
        """Make the volume durable."""
        _name, volume = self._volume(args)
        await volume.flush()
        return {}

    async def redirect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve the disk's export from a mirror on a backup node (fast rollback)."""
        name, volume = self._volume(args)
        target = {"node": text(args, "node"), "mirror": text(args, "mirror")}
        switch = self.switches[name]
        await switch.hold()
        await asyncio.to_thread(_write_json, volume.folder / REDIRECT, target)
        switch.release(RemoteMirror(self.peers, target["node"], target["mirror"], volume.size))
        return {"export": name, "serving": "mirror", **target}

    async def hold(self, args: dict[str, Any]) -> dict[str, Any]:
        """Hold the export's new requests and wait for those in flight (before switching back)."""
        name, _volume = self._volume(args)
        await self.switches[name].hold()
        return {"export": name, "held": True}

    async def serve_local(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve the export from the volume again; held requests go to the volume."""
        name, volume = self._volume(args)
        switch = self.switches[name]
        await switch.hold()
        await asyncio.to_thread(volume.sync)
        (volume.folder / REDIRECT).unlink(missing_ok=True)
        switch.release(volume)
        return {"export": name, "serving": "volume"}


def _allocated(folder: Path) -> int:
    try:
        return sum(p.stat().st_blocks * 512 for p in folder.iterdir())
    except OSError:
        return 0


def _range(volume: Volume, offset: int, length: int) -> None:
    if length > MAX_IO or offset < 0 or length < 0 or offset + length > volume.size:
        raise InputError(f"range {offset}+{length} is outside the volume or over {MAX_IO} bytes")


def _write_json(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        json.dump(body, out)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def _redirect(volume: Volume) -> dict[str, Any]:
    """Where a fast rollback redirects the volume's export ({} when it serves the volume)."""
    path = volume.folder / REDIRECT
    return dict(json.loads(path.read_text())) if path.exists() else {}
