"""Patched chunks: a chunk stored as a base chunk plus the 4 KiB blocks written since.

An incremental snapshot need not copy a whole 64 KiB chunk when a VM rewrote one
4 KiB block of it. The manifest can say "chunk `index` is `base` with the blocks of
`mask` replaced by the stored chunk `delta`": a :class:`Patch`. The delta's plaintext
is those blocks, in block order, concatenated (a chunk's last block may be short).
The entry still names the *content id* of the whole chunk, the id it would have as a
plain chunk, so comparisons with a live disk, deduplication and restores work on
content; reading a patched chunk rebuilds it and checks it against that id.

A base of None is an all-zero chunk (the chunk was a hole in the parent).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from nodes.block_masks import BLOCK, block_count, full_mask
from nodes.chunks import ChunkCodec
from nodes.errors import ChunkCorrupted

Get = Callable[[list[bytes]], Awaitable[dict[bytes, bytes]]]
"""Fetch stored forms by chunk id (every id found, or an error)."""


@dataclass(frozen=True)
class Patch:
    """How a patched entry is rebuilt: base chunk (None: zeros), delta chunk, block mask."""

    base: bytes | None
    delta: bytes
    mask: int

    def stored_ids(self) -> list[bytes]:
        """The stored chunks this patch reads."""
        return [self.delta] if self.base is None else [self.base, self.delta]


def stored_ids(chunks: Mapping[int, bytes], patches: Mapping[int, Patch]) -> set[bytes]:
    """The stored chunks a map index -> chunk id reads: a patched index's base and delta."""
    ids = {chunk for index, chunk in chunks.items() if index not in patches}
    for patch in patches.values():
        ids.update(patch.stored_ids())
    return ids


def mask_bytes(mask: int, length: int) -> bytes:
    """A mask as fixed-width little-endian bytes for a chunk of `length` bytes."""
    return mask.to_bytes(-(-block_count(length) // 8), "little")


def spans(mask: int, length: int) -> list[tuple[int, int]]:
    """The (offset, length) in the chunk of each block of `mask`, in order."""
    out = []
    for block in range(block_count(length)):
        if mask >> block & 1:
            start = block * BLOCK
            out.append((start, min(BLOCK, length - start)))
    return out


def apply(base: bytes | None, blocks: bytes, mask: int, length: int) -> bytes:
    """The chunk `base` (None: zeros) with the blocks of `mask` replaced by `blocks`.

    Raises ValueError when the sizes do not fit the mask and the chunk length.
    """
    if mask <= 0 or mask > full_mask(length):
        raise ValueError(f"block mask {mask:#x} does not fit a chunk of {length} bytes")
    out = bytearray(length) if base is None else bytearray(base)
    if len(out) != length:
        raise ValueError(f"base is {len(out)} bytes, the chunk {length}")
    at = 0
    for start, n in spans(mask, length):
        out[start : start + n] = blocks[at : at + n]
        at += n
    if at != len(blocks) or len(out) != length:
        raise ValueError(f"delta is {len(blocks)} bytes, the mask selects {at}")
    return bytes(out)


def rebuild(
    codec: ChunkCodec, content_id: bytes, patch: Patch, plain: dict[bytes, bytes], length: int
) -> bytes:
    """A patched chunk from its decoded base and delta, checked against its content id."""
    base = None if patch.base is None else plain[patch.base]
    try:
        data = apply(base, plain[patch.delta], patch.mask, length)
    except ValueError as err:
        raise ChunkCorrupted(content_id, f"patch does not apply: {err}") from None
    if not hmac.compare_digest(codec.chunk_id(data), content_id):
        raise ChunkCorrupted(content_id, "patched chunk does not match its id")
    return data


async def read_chunks(
    get: Get, codec: ChunkCodec, wanted: Sequence[tuple[bytes, Patch | None, int]]
) -> list[bytes]:
    """Plaintexts of chunks named by (content id, patch or None, length), fetched with `get`.

    Plain entries are fetched by their id; patched ones by their base and delta,
    rebuilt and checked. Every stored chunk is checked against its id.
    """
    ids = list(
        dict.fromkeys(
            sid for cid, patch, _n in wanted for sid in (patch.stored_ids() if patch else [cid])
        )
    )
    found = await get(ids) if ids else {}

    def decode() -> list[bytes]:
        plain = {sid: codec.decode(sid, found[sid]) for sid in ids}
        return [
            plain[cid] if patch is None else rebuild(codec, cid, patch, plain, n)
            for cid, patch, n in wanted
        ]

    return await asyncio.to_thread(decode)
