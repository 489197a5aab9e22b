"""The business node: VM disks as volumes, served over NBD, frozen for snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.errors import InputError, NotFound, VmsnapError
from ledger.vm import check_disk_size, check_resource_id, check_vm_name
from nodes.block_masks import is_mask_of, pick_blocks
from nodes.blockdev import STATE_HOLE
from nodes.chunks import ChunkCodec, is_zero
from nodes.config import Config
from nodes.errors import VolumeError
from nodes.nbd import NbdServer
from nodes.nbd_tls import check_exposure
from nodes.peers import Peers
from nodes.request_args import integer, text
from nodes.stale_views import release_stale_views
from nodes.switch import RemoteMirror, Switch
from nodes.volume import Volume

if TYPE_CHECKING:
    from nodes.ledger_replica import LedgerReplica

REDIRECT = "redirect.json"

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_IO = 4 * 1024 * 1024
MAX_CHUNKS_PER_CALL = 64
MIN_CHUNK = 4096
MAX_CHUNK = 64 * 1024
CHECKPOINT_EVERY = 2.0
"""Seconds between checkpoints of the volumes' metadata logs."""
SWITCH_INTERVAL = 0.0005
"""How long a thread may hold the GIL while another waits for it (Python's default: 5 ms)."""


def export_name(vm: str, resource_id: str) -> str:
    """The NBD export name of a VM disk."""
    return f"{vm}/{resource_id}"


class VolumeNotFound(NotFound):
    """No volume for that disk on this node."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no volume {name!r} on this business node")


class Business:
    """Volumes under ``volumes/VM/RESOURCE_ID/``, each exported over NBD by name."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.root = config.node_dir(name) / "volumes"
        self.root.mkdir(parents=True, exist_ok=True)
        self.codec = ChunkCodec(config.data_key(), config.storage.compression_level)
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
        port = config.network.base_port + 100 + int(name.rsplit("-", 1)[1])
        tls = config.nbd_tls()
        check_exposure(config.nbd.host, tls is not None, config.nbd.allow_plaintext)
        self.nbd = NbdServer(
            dict(self.switches),
            host=config.nbd.host,
            port=port if config.network.base_port else 0,
            tls=tls,
        )
        self.nbd_port = 0
        self._cleanup: asyncio.Task[int] | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, config: Config, name: str) -> Business:
        """Open every volume and start the NBD server."""
        # A thread reading chunks for a snapshot must not keep a VM's request waiting long.
        sys.setswitchinterval(SWITCH_INTERVAL)
        node = cls(config, name)
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
            "volume.freeze": self.freeze,
            "volume.release": self.release,
            "volume.commit_base": self.commit_base,
            "volume.changed": self.changed,
            "volume.read_chunks": self.read_chunks,
            "volume.read_blocks": self.read_blocks,
            "volume.chunk_ids": self.chunk_ids,
            "volume.allocated": self.allocated,
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

    async def freeze(self, args: dict[str, Any]) -> dict[str, Any]:
        """Freeze the volume as a view (the initial snapshot): metadata only."""
        _name, volume = self._volume(args)
        info = await asyncio.to_thread(volume.freeze, text(args, "view"))
        return {
            "view": info.name,
            "generation": info.generation,
            "chunks": volume.chunks,
            "chunk_size": volume.chunk_size,
            "size": volume.size,
            "base_generation": volume.base_generation,
            "base_view": volume.base_view,
            "changed": len(volume.changed_chunks(info.name)),
            "written": len(volume.changed_chunks(info.name, since=0)),
        }

    async def release(self, args: dict[str, Any]) -> dict[str, Any]:
        """Release a view; writes stop preserving its chunks."""
        _name, volume = self._volume(args)
        released = await asyncio.to_thread(volume.release, text(args, "view"))
        return {"released": released}

    async def commit_base(self, args: dict[str, Any]) -> dict[str, Any]:
        """Make a view the baseline that dirty tracking counts from."""
        _name, volume = self._volume(args)
        await asyncio.to_thread(volume.commit_base, text(args, "view"))
        return {}

    async def changed(self, args: dict[str, Any]) -> dict[str, Any]:
        """Chunk indexes of a view changed since the baseline (or ``since``), paged.

        With ``masks`` true, also the mask of each chunk's changed 4 KiB blocks.
        """
        _name, volume = self._volume(args)
        view = text(args, "view")
        since = integer(args, "since") if args.get("since") is not None else None
        start, limit = integer(args, "start", 0), min(integer(args, "limit", 65536), 65536)
        with_masks = False if args.get("masks") is None else args["masks"]
        if not isinstance(with_masks, bool):
            raise InputError("masks must be true or false")

        def page() -> list[tuple[int, int]]:
            if with_masks:
                found = volume.changed_blocks(view, since)
            else:
                found = [(i, 0) for i in volume.changed_chunks(view, since)]
            return [item for item in found if item[0] >= start][:limit]

        changed = await asyncio.to_thread(page)
        reply: dict[str, Any] = {"indexes": [i for i, _ in changed], "more": len(changed) == limit}
        if with_masks:
            reply["masks"] = [mask for _, mask in changed]
        return reply

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

    async def read_chunks(self, args: dict[str, Any]) -> dict[str, Any]:
        """Up to 64 chunks of a view, by index: ``b""`` for an all-zero one; their plain size."""
        _name, volume = self._volume(args)
        indexes = args.get("indexes")
        if not isinstance(indexes, list) or len(indexes) > MAX_CHUNKS_PER_CALL:
            raise InputError(f"indexes must be a list of at most {MAX_CHUNKS_PER_CALL}")
        if not all(isinstance(i, int) and 0 <= i < volume.chunks for i in indexes):
            raise InputError("chunk index out of range")
        view = volume.view(text(args, "view"))
        chunks = await asyncio.to_thread(view.read_chunks, indexes)
        size, chunk = volume.size, volume.chunk_size
        return {"chunks": chunks, "bytes": sum(min(chunk, size - i * chunk) for i in indexes)}

    async def read_blocks(self, args: dict[str, Any]) -> dict[str, Any]:
        """The blocks `masks` select of up to 64 chunks of a view, and each whole chunk's id.

        ``ids[i]`` is None for an all-zero chunk; ``blocks[i]`` concatenates the selected
        blocks in order (a short last block stays short); ``bytes`` is their total length.
        """
        _name, volume = self._volume(args)
        indexes, masks = args.get("indexes"), args.get("masks")
        if not isinstance(indexes, list) or len(indexes) > MAX_CHUNKS_PER_CALL:
            raise InputError(f"indexes must be a list of at most {MAX_CHUNKS_PER_CALL}")
        if not all(isinstance(i, int) and 0 <= i < volume.chunks for i in indexes):
            raise InputError("chunk index out of range")
        if not isinstance(masks, list) or len(masks) != len(indexes):
            raise InputError("masks must be a list parallel to indexes")
        lengths = [min(volume.chunk_size, volume.size - i * volume.chunk_size) for i in indexes]
        if not all(is_mask_of(m, n) for m, n in zip(masks, lengths, strict=True)):
            raise InputError("each mask must select at least one block of its chunk, and no other")
        view = volume.view(text(args, "view"))

        def select() -> tuple[list[bytes | None], list[bytes]]:
            ids: list[bytes | None] = []
            blocks: list[bytes] = []
            for chunk, mask, length in zip(view.read_chunks(indexes), masks, lengths, strict=True):
                ids.append(None if is_zero(chunk) else self.codec.chunk_id(chunk))
                blocks.append(pick_blocks(chunk or bytes(length), mask))
            return ids, blocks

        ids, blocks = await asyncio.to_thread(select)
        return {"ids": ids, "blocks": blocks, "bytes": sum(len(b) for b in blocks)}

    async def allocated(self, args: dict[str, Any]) -> dict[str, Any]:
        """Indexes (from `start`, at most `limit`) of chunks holding data; the rest are holes."""
        _name, volume = self._volume(args)
        start, limit = integer(args, "start", 0), min(integer(args, "limit", 65536), 65536)

        def page() -> list[int]:
            found: list[int] = []
            position = start * volume.chunk_size
            for extent in volume.allocation(position, volume.size - position):
                if not extent.flags & STATE_HOLE:
                    first = position // volume.chunk_size
                    last = (position + extent.length - 1) // volume.chunk_size
                    found.extend(i for i in range(first, last + 1) if not found or i > found[-1])
                    if len(found) >= limit:
                        return found[:limit]
                position += extent.length
            return found

        indexes = await asyncio.to_thread(page)
        return {"indexes": indexes, "more": len(indexes) == limit}

    async def chunk_ids(self, args: dict[str, Any]) -> dict[str, Any]:
        """Ids of up to 64 live chunks (None for an all-zero chunk), to compare with a manifest."""
        _name, volume = self._volume(args)
        indexes = args.get("indexes")
        if not isinstance(indexes, list) or len(indexes) > MAX_CHUNKS_PER_CALL:
            raise InputError(f"indexes must be a list of at most {MAX_CHUNKS_PER_CALL}")
        if not all(isinstance(i, int) and 0 <= i < volume.chunks for i in indexes):
            raise InputError("chunk index out of range")

        def ids() -> list[bytes | None]:
            found: list[bytes | None] = []
            for i in indexes:
                start = i * volume.chunk_size
                data = volume.read_live(start, min(volume.chunk_size, volume.size - start))
                found.append(None if is_zero(data) else self.codec.chunk_id(data))
            return found

        return {"ids": await asyncio.to_thread(ids)}


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
