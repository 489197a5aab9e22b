"""A read-only block device over a volume's frozen view (the seed's initial snapshot)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodes.blockdev import Extent
from nodes.errors import VolumeError

if TYPE_CHECKING:
    from nodes.volume_reads import VolumeReads


class FrozenView:
    """A read-only block device over a volume's frozen view."""

    def __init__(self, volume: VolumeReads, name: str, generation: int) -> None:
        self.volume = volume
        self.name = name
        self.generation = generation

    @property
    def size(self) -> int:
        """Size of the volume."""
        return self.volume.size

    @property
    def read_only(self) -> bool:
        """Views are never written."""
        return True

    def read_chunk(self, idx: int) -> bytes:
        """Chunk `idx` as frozen."""
        found = self.volume.read_view_chunks(self.generation, [idx])[0]
        return found or bytes(min(self.volume.chunk_size, self.size - idx * self.volume.chunk_size))

    def read_chunks(self, indexes: Sequence[int]) -> list[bytes]:
        """Chunks `indexes` as frozen, in order; ``b""`` for each all-zero chunk."""
        return self.volume.read_view_chunks(self.generation, indexes)

    def read_range(self, offset: int, length: int) -> bytes:
        """Read any range of the view."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VolumeError(f"range {offset}+{length} is outside the view ({self.size} bytes)")
        chunk = self.volume.chunk_size
        out = bytearray()
        position = offset
        while position < offset + length:
            idx, within = divmod(position, chunk)
            piece = self.read_chunk(idx)[within : within + offset + length - position]
            out += piece
            position += len(piece)
        return bytes(out)

    async def read(self, offset: int, length: int) -> bytes:
        """Read as frozen."""
        return self.read_range(offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        """Refuse: views are read-only."""
        raise VolumeError("a frozen view is read-only")

    async def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        """Refuse: views are read-only."""
        raise VolumeError("a frozen view is read-only")

    async def trim(self, offset: int, length: int) -> None:
        """Refuse: views are read-only."""
        raise VolumeError("a frozen view is read-only")

    async def flush(self) -> None:
        """Nothing to flush."""

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        """Report everything as data (a view does not track holes)."""
        return [Extent(min(length, self.size - offset), 0)]
