"""The block-device interface NBD exports: what a volume, a frozen view or a mirror offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

STATE_HOLE = 1
STATE_ZERO = 2


@dataclass(frozen=True)
class Extent:
    """A run of bytes with one allocation state (NBD ``base:allocation`` flags)."""

    length: int
    flags: int


class BlockDevice(Protocol):
    """A fixed-size byte array served to a VM.

    Offsets and lengths are checked by the caller (the NBD server) against
    ``size`` before any method is called. Writes are durable once ``flush``
    returns (or at once when ``fua`` is set).
    """

    @property
    def size(self) -> int:
        """Size in bytes."""
        ...

    @property
    def read_only(self) -> bool:
        """True when writes are refused."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Return `length` bytes at `offset` (zeros where nothing was written)."""
        ...

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        """Write `data` at `offset`."""
        ...

    async def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        """Make `length` bytes at `offset` read as zeros (punching holes when allowed)."""
        ...

    async def trim(self, offset: int, length: int) -> None:
        """Declare the range unused; it may then read as zeros."""
        ...

    async def flush(self) -> None:
        """Make every completed write durable."""
        ...

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        """Describe allocation from `offset`, covering at least one byte and at most `length`."""
        ...
