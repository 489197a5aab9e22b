"""Patched chunks: a chunk stored as a base chunk plus the 4 KiB blocks written since.

An incremental snapshot need not copy a whole 64 KiB chunk when a VM rewrote one
4 KiB block of it. The manifest can say "chunk `index` is `base` with the blocks of
`mask` replaced by the stored chunk `delta`": a :class:`Patch`. The delta's plaintext
is those blocks, in block order, concatenated (a chunk's last block may be short).
The entry still names the *content id* of the whole chunk, the id it would have as a
plain chunk, so comparisons with a live disk, deduplication and restores work on
content; reading a patched chunk rebuilds it and checks it against that id.

A chunk patched again gets a *layer*: the blocks written since its parent's patch go
in a new delta laid over the parent's layers, so each incremental stores only what was
written since the last one. A patch has at most `MAX_LAYERS` layers; the next change
folds them into one (every block they cover, read again from the disk).

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


MAX_LAYERS = 4
"""Most deltas a patch lays over its base: a rebuild reads at most this many plus the base."""

NO_BASE = bytes(32)
"""A hole's base in a leaf."""
Layer = tuple[bytes, int]
"""One delta over a base: (delta id, block mask)."""


@dataclass(frozen=True)
class Patch:
    """How a patched entry is rebuilt: from its base chunk (None: zeros).

    `under`'s layers are laid over the base in order, then the top one (delta, mask).
    """

    base: bytes | None
    delta: bytes
    mask: int
    under: tuple[Layer, ...] = ()

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Every (delta id, mask), oldest first."""
        return (*self.under, (self.delta, self.mask))

    @property
    def covered(self) -> int:
        """Every block some layer replaces."""
        covered = self.mask
        for _delta, mask in self.under:
            covered |= mask
        return covered

    def stored_ids(self) -> list[bytes]:
        """The stored chunks this patch reads."""
        deltas = [delta for delta, _mask in self.layers]
        return deltas if self.base is None else [self.base, *deltas]

    def row(self, *head: object) -> list[object]:
        """`head`, then base (empty for none) and each layer's delta and mask: a stored row."""
        row = [*head, self.base or b""]
        for layer in self.layers:
            row += layer
        return row

    def leaf(self, length: int) -> bytes:
        """Base (zeros for none), then each layer's delta and mask, of a `length`-byte chunk."""
        parts = [NO_BASE if self.base is None else self.base]
        for delta, mask in self.layers:
            parts += (delta, mask_bytes(mask, length))
        return b"".join(parts)

    @classmethod
    def from_row(cls, row: Sequence[object]) -> Patch:
        """A patch from a row's tail, `[base, delta, mask, ...]`; Value- or TypeError if bad."""
        if len(row) < 3 or len(row) % 2 == 0:
            raise ValueError(f"a patch row of {len(row)} fields")
        under: tuple[Layer, ...] = ()
        if len(row) > 3:
            under = tuple((_blob(row[i]), _mask(row[i + 1])) for i in range(1, len(row) - 2, 2))
        return cls(_blob(row[0]) or None, _blob(row[-2]), _mask(row[-1]), under)


def _blob(value: object) -> bytes:
    if type(value) is not bytes:
        raise TypeError(f"a {type(value).__name__} where an id belongs")
    return value


def _mask(value: object) -> int:
    if type(value) is not int:  # not a bool either
        raise TypeError(f"a {type(value).__name__} where a block mask belongs")
    return value


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
    """A patched chunk from its decoded base and deltas, checked against its content id."""
    data = None if patch.base is None else plain[patch.base]
    try:
        for delta, mask in patch.layers:
            data = apply(data, plain[delta], mask, length)
    except ValueError as err:
        raise ChunkCorrupted(content_id, f"patch does not apply: {err}") from None
    assert data is not None  # a patch has at least one layer
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
