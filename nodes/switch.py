"""What a VM disk's NBD export serves: its volume, or (during a fast rollback) a mirror.

Every export serves a `Switch`. A switch passes each request to its current target; to
change targets it first holds new requests and waits for those in flight to finish, so no
write is lost or split between the two: a write acknowledged before the switch is in the
old target, one that arrived during it goes to the new one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nodes.blockdev import BlockDevice, Extent
from nodes.peers import Peers

DATA = 0
READ_STEP = 8 << 20


class Switch:
    """A block device that forwards to a target which can be swapped safely."""

    def __init__(self, target: BlockDevice) -> None:
        self.target = target
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._open = asyncio.Event()
        self._open.set()

    @property
    def size(self) -> int:
        """Size in bytes (the same on every target)."""
        return self.target.size

    @property
    def read_only(self) -> bool:
        """Whether the current target refuses writes."""
        return self.target.read_only

    @property
    def held(self) -> bool:
        """True while requests are held."""
        return not self._open.is_set()

    async def hold(self) -> None:
        """Hold new requests and wait until none is in flight."""
        self._open.clear()
        await self._drained.wait()

    def release(self, target: BlockDevice | None = None) -> None:
        """Serve from `target` (when given) and let held requests through."""
        if target is not None:
            self.target = target
        self._open.set()

    async def _enter(self) -> BlockDevice:
        while not self._open.is_set():
            await self._open.wait()
        self._in_flight += 1
        self._drained.clear()
        return self.target

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()

    async def read(self, offset: int, length: int) -> bytes:
        """Read from the current target."""
        target = await self._enter()
        try:
            return await target.read(offset, length)
        finally:
            self._leave()

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        """Write to the current target."""
        target = await self._enter()
        try:
            await target.write(offset, data, fua)
        finally:
            self._leave()

    async def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        """Zero a range of the current target."""
        target = await self._enter()
        try:
            await target.write_zeroes(offset, length, may_trim)
        finally:
            self._leave()

    async def trim(self, offset: int, length: int) -> None:
        """Trim a range of the current target."""
        target = await self._enter()
        try:
            await target.trim(offset, length)
        finally:
            self._leave()

    async def flush(self) -> None:
        """Flush the current target."""
        target = await self._enter()
        try:
            await target.flush()
        finally:
            self._leave()

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        """Allocation of the current target."""
        target = await self._enter()
        try:
            return await target.block_status(offset, length)
        finally:
            self._leave()


class RemoteMirror:
    """A mirror on a backup node as a block device; every write is durable when answered."""

    def __init__(self, peers: Peers, node: str, mirror: str, size: int) -> None:
        self.peers = peers
        self.node = node
        self.mirror = mirror
        self._size = size

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    @property
    def read_only(self) -> bool:
        """Mirrors take writes."""
        return False

    def _args(self, **more: Any) -> dict[str, Any]:
        return {"mirror": self.mirror, **more}

    async def read(self, offset: int, length: int) -> bytes:
        """Read from the mirror (in steps, for large reads)."""
        parts = []
        for start in range(offset, offset + length, READ_STEP):
            step = min(READ_STEP, offset + length - start)
            reply = await self.peers.call(
                self.node, "mirror.read", self._args(offset=start, length=step)
            )
            parts.append(reply["data"])
        return b"".join(parts)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        """Write through to the mirror's journal."""
        await self.peers.call(self.node, "mirror.write", self._args(offset=offset, data=data))

    async def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        """Zero a range of the mirror."""
        await self.peers.call(self.node, "mirror.zero", self._args(offset=offset, length=length))

    async def trim(self, offset: int, length: int) -> None:
        """Trimmed ranges read as zeros."""
        await self.write_zeroes(offset, length)

    async def flush(self) -> None:
        """Nothing to do: every write was durable when answered."""

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        """Everything reads as data (the mirror does not report holes)."""
        return [Extent(length, DATA)]
