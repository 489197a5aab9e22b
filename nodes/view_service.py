"""A business node's frozen views, for the snapshot workflow and the transfer node.

Freezing a volume (the seed's initial snapshot), releasing the view, and making it the
base dirty tracking counts from; which chunks of a view changed (and which of their 4 KiB
blocks); and their contents: whole chunks, the blocks a patch needs, or the ids of live
chunks to compare with a manifest. Reads run on worker threads, in calls of at most
`MAX_CHUNKS_PER_CALL` chunks. The reads (`ViewReads`) are also what the business node's
view server answers, from a process of its own (nodes/view_server.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ledger.errors import InputError
from nodes.block_masks import is_mask_of, pick_blocks
from nodes.blockdev import STATE_HOLE
from nodes.chunks import ChunkCodec, is_zero
from nodes.request_args import integer, text
from nodes.server import Handler
from nodes.volume import Volume
from nodes.volume_reads import VolumeReads

MAX_CHUNKS_PER_CALL = 64
READ_OPS = ("volume.read_chunks", "volume.read_blocks", "volume.chunk_ids", "volume.allocated")
"""The requests a view server answers as the business node itself would."""


class ViewReads:
    """The ``volume.*`` requests that only read, on the volumes `find` names."""

    def __init__(
        self, find: Callable[[dict[str, Any]], tuple[str, VolumeReads]], codec: ChunkCodec
    ) -> None:
        self._readable = find
        self.codec = codec

    def handlers(self) -> dict[str, Handler]:
        """The operations this part of the node serves: `READ_OPS`."""
        return {
            "volume.read_chunks": self.read_chunks,
            "volume.read_blocks": self.read_blocks,
            "volume.chunk_ids": self.chunk_ids,
            "volume.allocated": self.allocated,
        }

    async def read_chunks(self, args: dict[str, Any]) -> dict[str, Any]:
        """Up to 64 chunks of a view, by index: ``b""`` for an all-zero one; their plain size."""
        _name, volume = self._readable(args)
        indexes = _indexes(args, volume)
        view = volume.view(text(args, "view"))
        chunks = await asyncio.to_thread(view.read_chunks, indexes)
        size, chunk = volume.size, volume.chunk_size
        return {"chunks": chunks, "bytes": sum(min(chunk, size - i * chunk) for i in indexes)}

    async def read_blocks(self, args: dict[str, Any]) -> dict[str, Any]:
        """The blocks `masks` select of up to 64 chunks of a view, and each whole chunk's id.

        ``ids[i]`` is None for an all-zero chunk; ``blocks[i]`` concatenates the selected
        blocks in order (a short last block stays short); ``bytes`` is their total length.
        """
        _name, volume = self._readable(args)
        indexes, masks = _indexes(args, volume), args.get("masks")
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
        _name, volume = self._readable(args)
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
        _name, volume = self._readable(args)
        indexes = _indexes(args, volume)

        def ids() -> list[bytes | None]:
            chunks = volume.read_live_chunks(indexes)
            return [self.codec.chunk_id(data) if data else None for data in chunks]

        return {"ids": await asyncio.to_thread(ids)}


class ViewService(ViewReads):
    """The ``volume.*`` requests about frozen views, on the volumes `find` names."""

    def __init__(
        self, find: Callable[[dict[str, Any]], tuple[str, Volume]], codec: ChunkCodec
    ) -> None:
        super().__init__(find, codec)
        self._volume = find

    def handlers(self) -> dict[str, Handler]:
        """The operations this part of the node serves."""
        return {
            "volume.freeze": self.freeze,
            "volume.release": self.release,
            "volume.commit_base": self.commit_base,
            "volume.changed": self.changed,
            **super().handlers(),
        }

    async def freeze(self, args: dict[str, Any]) -> dict[str, Any]:
        """Freeze the volume as a view (the initial snapshot): metadata only.

        With ``parent`` (a snapshot id), ``parent_generation`` is the generation that
        snapshot's view froze when it was made the base of this volume (None when it never
        was), and ``changed`` counts the chunks written since; else since the base.
        ``written``, every chunk ever written, is only counted when there is no such
        generation: it is what a full snapshot reads.
        """
        _name, volume = self._volume(args)
        parent = text(args, "parent") if args.get("parent") is not None else None

        def freeze() -> dict[str, Any]:
            info = volume.freeze(text(args, "view"))
            since = None if parent is None else volume.base_generation_of(parent)
            found: dict[str, Any] = {
                "view": info.name,
                "generation": info.generation,
                "base_generation": volume.base_generation,
                "base_view": volume.base_view,
                "parent_generation": since,
                "changed": len(volume.changed_chunks(info.name, since)),
            }
            if since is None:
                found["written"] = len(volume.changed_chunks(info.name, since=0))
            return found

        frozen = await asyncio.to_thread(freeze)
        return {
            **frozen,
            "chunks": volume.chunks,
            "chunk_size": volume.chunk_size,
            "size": volume.size,
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


def _indexes(args: dict[str, Any], volume: VolumeReads) -> list[int]:
    """The request's ``indexes``: at most `MAX_CHUNKS_PER_CALL` chunks of `volume`."""
    indexes = args.get("indexes")
    if not isinstance(indexes, list) or len(indexes) > MAX_CHUNKS_PER_CALL:
        raise InputError(f"indexes must be a list of at most {MAX_CHUNKS_PER_CALL}")
    if not all(isinstance(i, int) and 0 <= i < volume.chunks for i in indexes):
        raise InputError("chunk index out of range")
    return indexes
