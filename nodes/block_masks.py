"""Block masks: which 4 KiB blocks of a chunk were written, as an int (bit b = block b).

A chunk of length L has ceil(L / BLOCK) blocks; the last block, like the volume's last
chunk, may be short. A chunk no larger than a block is a single block.
"""

from __future__ import annotations

BLOCK = 4096


def block_count(length: int) -> int:
    """Blocks in a chunk of `length` bytes."""
    return -(-length // BLOCK)


def full_mask(length: int) -> int:
    """The mask of every block of a chunk of `length` bytes."""
    return (1 << block_count(length)) - 1


def span_mask(start: int, end: int) -> int:
    """The blocks holding bytes `start` to `end` (exclusive, ``start < end``) of a chunk."""
    return (2 << ((end - 1) // BLOCK)) - (1 << (start // BLOCK))


def is_mask_of(mask: object, length: int) -> bool:
    """True when `mask` is a non-zero mask of blocks a chunk of `length` bytes has."""
    return isinstance(mask, int) and not isinstance(mask, bool) and 0 < mask <= full_mask(length)


def pick_blocks(chunk: bytes, mask: int) -> bytes:
    """The blocks of `chunk` whose bits `mask` sets, concatenated in block order."""
    picked = bytearray()
    for block in range(block_count(len(chunk))):
        if mask >> block & 1:
            picked += chunk[block * BLOCK : (block + 1) * BLOCK]
    return bytes(picked)


def encode(mask: int) -> bytes:
    """A mask as stored: little-endian bytes."""
    return mask.to_bytes(max(1, -(-mask.bit_length() // 8)), "little")


def decode(stored: bytes) -> int:
    """A stored mask."""
    return int.from_bytes(stored, "little")
