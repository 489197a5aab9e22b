"""The transmission phase of one NBD connection: requests in, replies out.

Each request is a task owned by the connection (a TaskGroup), so requests run
concurrently and replies may leave out of order, one whole reply at a time. A
FLUSH first waits for the writes received before it. A connection holds at most
a bounded number of request bytes at once; past that it stops reading.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass

from nodes import nbd_protocol as wire
from nodes.blockdev import BlockDevice
from nodes.errors import NbdProtocolError

log = logging.getLogger("vmsnap.nbd")

STREAM_LIMIT = 1 << 20
"""Stream buffer size: a connection stops reading from its socket past twice this."""
REQUEST_OVERHEAD = 4096
"""What a request costs its connection's budget on top of its data."""
MIN_BUDGET = 64 << 20
"""Request bytes (data plus overhead) one connection may hold at once, at least."""
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

Result = bytes | list[tuple[int, int]] | None
"""A command's outcome: read data, block status descriptors, or nothing."""


@dataclass(frozen=True)
class Choice:
    """The export a client chose and what it negotiated for it."""

    name: str
    device: BlockDevice
    session: wire.Session


class Transmission:
    """The transmission phase of one connection: requests in, replies out."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        choice: Choice,
        timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._peer = peer
        self._name = choice.name
        self._device = choice.device
        self._session = choice.session
        self._timeout = timeout
        self._sending = asyncio.Lock()
        self._writes: set[asyncio.Task[None]] = set()
        self._budget = _Budget(max(MIN_BUDGET, choice.session.max_request + REQUEST_OVERHEAD))
        self._reading: asyncio.Task[None] | None = None
        self._stopped = False

    async def run(self) -> None:
        """Serve requests until the client disconnects or stop() is called."""
        if self._stopped:
            return
        async with asyncio.TaskGroup() as requests:
            self._reading = requests.create_task(self._read_requests(requests))

    def stop(self) -> None:
        """Read no more requests; those in flight are still answered."""
        self._stopped = True
        if self._reading is not None:
            self._reading.cancel()

    async def _read_requests(self, requests: asyncio.TaskGroup) -> None:
        """Read requests and answer each in a task of `requests`."""
        while (request := await self._next_request()) is not None:
            data_length = request.length if request.type in (wire.CMD_READ, wire.CMD_WRITE) else 0
            cost = REQUEST_OVERHEAD + min(data_length, self._session.max_request)
            await self._budget.take(cost)
            payload = await self._payload(request)
            barrier = tuple(self._writes) if request.type == wire.CMD_FLUSH else ()
            task = requests.create_task(self._answer(request, payload, barrier, cost))
            if request.writes:
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    async def _next_request(self) -> wire.Request | None:
        """Return the next request, or None once the client disconnects."""
        try:
            # No timeout here: a VM that does not touch its disk may stay quiet for hours.
            header = await self._reader.readexactly(wire.REQUEST.size)
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise
            log.debug("NBD client %s left without NBD_CMD_DISC", self._peer)
            return None
        request = wire.decode_request(header)
        return None if request.type == wire.CMD_DISC else request

    async def _payload(self, request: wire.Request) -> bytes | None:
        """Return a write's data (b"" for other commands), or None when it was too long."""
        if request.type != wire.CMD_WRITE:
            return b""
        limit = self._session.max_request
        if request.length > limit:
            if request.length > max(limit, wire.DOS_WRITE):
                raise NbdProtocolError(f"write of {request.length} bytes, over {limit}")
            await discard(self._reader, request.length, self._timeout)
            return None
        async with asyncio.timeout(self._timeout):
            return await self._reader.readexactly(request.length)

    async def _answer(
        self,
        request: wire.Request,
        payload: bytes | None,
        barrier: tuple[asyncio.Task[None], ...],
        cost: int,
    ) -> None:
        """Check and perform one request, then reply."""
        try:
            error = wire.EINVAL if payload is None else wire.check_request(request, self._session)
            result: Result = None
            if not error:
                error, result = await self._perform(request, payload or b"", barrier)
            await self._reply(request, error, result)
        finally:
            self._budget.give(cost)

    async def _perform(
        self, request: wire.Request, payload: bytes, barrier: tuple[asyncio.Task[None], ...]
    ) -> tuple[int, Result]:
        """Run a checked request on the device; a failure there becomes an NBD error."""
        try:
            result = await self._command(request, payload, barrier)
        except Exception as err:
            log.exception(
                "%s of %d bytes at %d on NBD export %r failed",
                request.name,
                request.length,
                request.offset,
                self._name,
            )
            no_space = isinstance(err, OSError) and err.errno in _NO_SPACE
            return (wire.ENOSPC if no_space else wire.EIO), None
        return 0, result

    async def _command(
        self, request: wire.Request, payload: bytes, barrier: tuple[asyncio.Task[None], ...]
    ) -> Result:
        """Call the device for one request."""
        device, offset, length = self._device, request.offset, request.length
        fua = bool(request.flags & wire.CMD_FLAG_FUA)
        match request.type:
            case wire.CMD_READ:
                data = await device.read(offset, length)
                if len(data) != length:
                    raise RuntimeError(f"device read {len(data)} bytes instead of {length}")
                return data
            case wire.CMD_WRITE:
                await device.write(offset, payload, fua)
            case wire.CMD_WRITE_ZEROES:
                may_trim = not request.flags & wire.CMD_FLAG_NO_HOLE
                await device.write_zeroes(offset, length, may_trim=may_trim)
            case wire.CMD_TRIM:
                await device.trim(offset, length)
            case wire.CMD_FLUSH:
                if barrier:
                    await asyncio.wait(barrier)
                await device.flush()
            case wire.CMD_BLOCK_STATUS:
                extents = await device.block_status(offset, length)
                return wire.status_descriptors(
                    extents, length, bool(request.flags & wire.CMD_FLAG_REQ_ONE)
                )
        if fua and request.type in (wire.CMD_WRITE_ZEROES, wire.CMD_TRIM):
            await device.flush()
        return None

    async def _reply(self, request: wire.Request, error: int, result: Result) -> None:
        """Send the reply to one request: simple, or structured when negotiated."""
        handle, structured = request.handle, self._session.structured
        parts: tuple[bytes, ...]
        if error and structured:
            name = wire.ERROR_NAMES.get(error, str(error))
            text = f"{request.name} of {request.length} bytes at {request.offset}: {name}"
            parts = (wire.error_chunk(handle, error, text),)
        elif error:
            parts = (wire.simple_reply(handle, error),)
        elif isinstance(result, bytes) and structured:
            parts = (wire.data_chunk_header(handle, request.offset, len(result)), result)
        elif isinstance(result, bytes):
            parts = (wire.simple_reply(handle), result)
        elif result is not None:
            parts = (wire.block_status_chunk(handle, result),)
        else:
            parts = (wire.simple_reply(handle),)
        await self._send(parts)

    async def _send(self, parts: tuple[bytes, ...]) -> None:
        """Write one whole reply; replies to concurrent requests never interleave."""
        async with self._sending, asyncio.timeout(self._timeout):
            if self._writer.is_closing():
                raise ConnectionResetError("the NBD client is gone")
            for part in parts:
                self._writer.write(part)
            await self._writer.drain()


class _Budget:
    """Bounds the request bytes one connection holds at once; only its reader waits."""

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._waiter: asyncio.Future[None] | None = None

    async def take(self, amount: int) -> None:
        """Wait until `amount` bytes are free, then hold them."""
        while self._free < amount:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        self._free -= amount

    def give(self, amount: int) -> None:
        """Release bytes taken earlier."""
        self._free += amount
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def discard(reader: asyncio.StreamReader, length: int, timeout: float) -> None:
    """Read and drop `length` bytes, a piece at a time, within the timeout per piece."""
    while length > 0:
        async with asyncio.timeout(timeout):
            piece = await reader.readexactly(min(length, STREAM_LIMIT))
        length -= len(piece)
