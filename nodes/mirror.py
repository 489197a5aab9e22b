"""Mirrors: a snapshot served as a writable disk from the backup cluster, writes journaled.

A mirror is made in O(metadata) from a snapshot's manifest: its base is the manifest's
map (chunk index -> chunk id), read from the chunks the cluster already holds. A write
reads the chunk it falls in, patches it, stores the new chunk on R backup nodes like any
chunk, and appends ``index -> new chunk id`` to the mirror's journal (``nodes/journal.py``),
which is fsynced here and copied to the other R-1 backup nodes of the mirror before the
write is acknowledged. Reads see the newest journaled chunk of an index, else the base.

Layout on the backup node that holds the mirror::

    mirrors/<mirror id>/meta.json     vm, disk, size, chunk size, snapshot manifest, open
                        base.cbor     the base map, [[index, chunk id], ...]; a patched entry
                                    goes on with its base id (or b""), delta id and mask
                        journal.log   the journal (also kept, alone, on the replicas)
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cbor2

from nodes.chunks import ChunkCodec, is_zero
from nodes.errors import NodeError
from nodes.journal import Journal, Record
from nodes.patches import Patch, read_chunks, stored_ids
from nodes.replication import BackupCluster

CACHE_CHUNKS = 256
Replicate = Callable[[list[Record]], Awaitable[None]]
LocalGet = Callable[[bytes], Awaitable[bytes | None]]


class MirrorError(NodeError):
    """A mirror is unknown, closed, or was asked for something outside it."""


@dataclass(frozen=True)
class MirrorMeta:
    """What a mirror serves."""

    mirror: str
    vm: str
    resource_id: str
    size: int
    chunk_size: int
    manifest: str
    open: bool = True


class Mirror:
    """One mirror on its backup node; writes are serialised, in journal order."""

    def __init__(
        self,
        folder: Path,
        meta: MirrorMeta,
        base: dict[int, bytes],
        cluster: BackupCluster,
        codec: ChunkCodec,
        local: LocalGet | None = None,
        patches: dict[int, Patch] | None = None,
    ) -> None:
        self.folder = folder
        self.local = local
        self.meta = meta
        self.base = base
        self.patches = patches or {}
        self.cluster = cluster
        self.codec = codec
        self.journal = Journal(folder / "journal.log", meta.mirror)
        self.overlay: dict[int, bytes | None] = {r.index: r.chunk for r in self.journal.records}
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = asyncio.Lock()

    @classmethod
    def create(
        cls,
        folder: Path,
        meta: MirrorMeta,
        base: dict[int, bytes],
        cluster: BackupCluster,
        codec: ChunkCodec,
        local: LocalGet | None = None,
        patches: dict[int, Patch] | None = None,
    ) -> Mirror:
        """Write the mirror's metadata and base map; the journal starts empty."""
        folder.mkdir(parents=True, exist_ok=True)
        patches = patches or {}
        rows = [
            [index, chunk] if index not in patches else patches[index].row(index, chunk)
            for index, chunk in sorted(base.items())
        ]
        (folder / "base.cbor").write_bytes(cbor2.dumps(rows))
        _write_meta(folder, meta)
        return cls(folder, meta, base, cluster, codec, local, patches)

    @classmethod
    def open(
        cls,
        folder: Path,
        cluster: BackupCluster,
        codec: ChunkCodec,
        local: LocalGet | None = None,
    ) -> Mirror:
        """Reopen a mirror after a restart."""
        meta = MirrorMeta(**json.loads((folder / "meta.json").read_text()))
        base_file = folder / "base.cbor"
        rows = cbor2.loads(base_file.read_bytes()) if base_file.exists() else []
        base = {int(row[0]): bytes(row[1]) for row in rows}
        patches = {int(row[0]): Patch.from_row(row[2:]) for row in rows if len(row) > 2}
        return cls(folder, meta, base, cluster, codec, local, patches)

    def tag(self) -> dict[str, Any]:
        """The journal's position and head hash now."""
        return {"position": self.journal.position, "head": self.journal.head}

    def close_mirror(self) -> None:
        """Stop serving (the journal stays, for audits); drop the base map."""
        self.meta = MirrorMeta(**{**asdict(self.meta), "open": False})
        _write_meta(self.folder, self.meta)
        (self.folder / "base.cbor").unlink(missing_ok=True)
        self.base = {}
        self.patches = {}
        self._cache.clear()

    def _check(self, offset: int, length: int) -> None:
        if not self.meta.open:
            raise MirrorError(f"mirror {self.meta.mirror[:12]} is closed")
        if offset < 0 or length < 0 or offset + length > self.meta.size:
            raise MirrorError(f"range {offset}+{length} is outside the mirror")

    def chunk_id(self, index: int) -> bytes | None:
        """The chunk the mirror shows at `index` (None: zeros)."""
        if index in self.overlay:
            return self.overlay[index]
        return self.base.get(index)

    def stored_ids(self) -> set[bytes]:
        """The stored chunks the base map reads (a patched entry's base and delta)."""
        return stored_ids(self.base, self.patches)

    def _length(self, index: int) -> int:
        return min(self.meta.chunk_size, self.meta.size - index * self.meta.chunk_size)

    async def _chunk(self, index: int) -> bytes:
        chunk = self.chunk_id(index)
        if chunk is None:
            return bytes(self._length(index))
        cached = self._cache.get(chunk)
        if cached is not None:
            self._cache.move_to_end(chunk)
            return cached
        patch = None if index in self.overlay else self.patches.get(index)
        (data,) = await read_chunks(self._get, self.codec, [(chunk, patch, self._length(index))])
        self._remember(chunk, data)
        return data

    async def _get(self, ids: list[bytes]) -> dict[bytes, bytes]:
        """Stored forms by id: from this node's store when it holds them, else the cluster."""
        found: dict[bytes, bytes] = {}
        for chunk in ids:
            blob = await self.local(chunk) if self.local is not None else None
            if blob is not None:
                found[chunk] = blob
        rest = [chunk for chunk in ids if chunk not in found]
        if rest:
            found.update(await self.cluster.get(rest))
        return found

    def _remember(self, chunk: bytes, data: bytes) -> None:
        self._cache[chunk] = data
        while len(self._cache) > CACHE_CHUNKS:
            self._cache.popitem(last=False)

    async def read(self, offset: int, length: int) -> bytes:
        """Read what the VM sees."""
        self._check(offset, length)
        size = self.meta.chunk_size
        out = bytearray()
        position = offset
        while position < offset + length:
            index, within = divmod(position, size)
            take = min(size - within, offset + length - position)
            out += (await self._chunk(index))[within : within + take]
            position += take
        return bytes(out)

    async def write(
        self, offset: int, length: int, data: bytes | None, replicate: Replicate
    ) -> list[Record]:
        """Patch (None: zero), store and journal every chunk touched; durable on return.

        `replicate` copies the new records to the journal's replicas, inside the
        write lock, so every replica receives the records in journal order.
        """
        self._check(offset, length)
        async with self._lock:
            size = self.meta.chunk_size
            changes: list[tuple[int, bytes | None]] = []
            blobs: dict[bytes, bytes] = {}
            position = offset
            while position < offset + length:
                index, within = divmod(position, size)
                take = min(size - within, offset + length - position)
                if data is None and take == self._length(index):
                    changes.append((index, None))
                    position += take
                    continue
                chunk = bytearray(await self._chunk(index))
                start = position - offset
                chunk[within : within + take] = (
                    bytes(take) if data is None else data[start : start + take]
                )
                plain = bytes(chunk)
                if is_zero(plain):
                    changes.append((index, None))
                else:
                    chunk_id = self.codec.chunk_id(plain)
                    blobs[chunk_id] = await asyncio.to_thread(self.codec.encode, plain, chunk_id)
                    self._remember(chunk_id, plain)
                    changes.append((index, chunk_id))
                position += take
            if blobs:
                lacking = await self.cluster.missing(list(blobs))
                await self.cluster.put(blobs, lacking)
            records = await asyncio.to_thread(self.journal.append, changes)
            for record in records:
                self.overlay[record.index] = record.chunk
            await replicate(records)
            return records


def _write_meta(folder: Path, meta: MirrorMeta) -> None:
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(asdict(meta)))
    tmp.replace(folder / "meta.json")


def remove(folder: Path) -> None:
    """Forget a mirror entirely (its journal too)."""
    shutil.rmtree(folder, ignore_errors=True)
