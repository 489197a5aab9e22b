"""A connection that carries frames (``nodes.wire``) with few copies of their bytes.

``asyncio`` streams copy every byte twice on the way in (the socket's bytes into the
stream's buffer, the buffer into the frame) into fresh allocations, and read at most
256 KiB per wakeup. Here the socket writes into an inbox reused for every frame; a body
larger than what the inbox holds goes to a second buffer, also reused (up to
``_SPARE_KEPT`` bytes), which the socket fills directly. While it fills, the socket wakes
the reader only once the rest of the body (or ``_WAKE_AT`` bytes of it) has arrived
(``SO_RCVLOWAT``), not once per segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from nodes.errors import ProtocolError

_INBOX = 256 * 1024
_SMALL_BODY = _INBOX // 2
_WAKE_AT = 512 * 1024
_SPARE_KEPT = 4 * 1024 * 1024
_HEADER_SIZE = 4


class FrameStream(asyncio.BufferedProtocol):
    """Both directions of one connection: frame bodies in, frame parts out."""

    def __init__(self, on_connect: Callable[[FrameStream], None] | None = None) -> None:
        self._on_connect = on_connect
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray(_INBOX)
        self._start = 0
        self._end = 0
        self._spare = bytearray()
        self._body: memoryview | None = None
        self._filled = 0
        self._eof = False
        self._error: Exception | None = None
        self._lost: Exception | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._paused_reading = False
        self._paused_writing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport and announce the new connection."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._on_connect is not None:
            self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the socket writes next: the rest of a large body, or the inbox."""
        if self._body is not None:
            return self._body[self._filled :]
        if self._end == len(self._inbox):
            self._compact()
        return memoryview(self._inbox)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Count the bytes the socket wrote and wake the reader."""
        if self._body is not None:
            self._filled += nbytes
        else:
            self._end += nbytes
        self._flow()
        self._wake()

    def eof_received(self) -> bool:
        """The peer will send no more; the reader sees the end of the stream."""
        self._eof = True
        self._wake()
        return True  # answers may still go out on a half-closed connection

    def connection_lost(self, exc: Exception | None) -> None:
        """End the stream for the reader and fail writers waiting to drain."""
        self._error = exc
        self._lost = exc or ConnectionResetError("connection closed")
        self._eof = True
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(self._lost)
        self._drain_waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        """The transport's write buffer is full: drain() waits from now on."""
        self._paused_writing = True

    def resume_writing(self) -> None:
        """The transport's write buffer emptied: release writers waiting in drain()."""
        self._paused_writing = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def read_body(self, max_frame: int, body_timeout: float | None) -> bytes | None:
        """Return the next frame's body; None when the peer closed cleanly between frames."""
        while self._end - self._start < _HEADER_SIZE:
            if self._eof:
                if self._error is not None:
                    raise self._error
                if self._end == self._start:
                    return None
                raise ProtocolError("stream ended inside a frame header")
            await self._wait_for_data()
        length = int.from_bytes(self._inbox[self._start : self._start + _HEADER_SIZE], "big")
        if length > max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the maximum of {max_frame}")
        self._consume(_HEADER_SIZE)
        try:
            async with asyncio.timeout(body_timeout):
                if length <= _SMALL_BODY:
                    return await self._small_body(length)
                return await self._large_body(length)
        except TimeoutError as err:
            raise ProtocolError(
                f"frame body of {length} bytes did not arrive within {body_timeout:g} s"
            ) from err

    def write(self, data: bytes) -> None:
        """Hand bytes to the transport (which drops them once the connection is lost)."""
        if self._transport is None:
            raise ConnectionResetError("connection not made")
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._lost is not None:
            raise self._lost
        if self._paused_writing:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def close(self) -> None:
        """Start closing the connection."""
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await asyncio.shield(self._closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra information (``peername``, ``socket`` …)."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    async def _small_body(self, length: int) -> bytes:
        """Return a body of at most half the inbox, copied out of it once it is all there."""
        while self._end - self._start < length:
            self._check_ended(length, self._end - self._start)
            await self._wait_for_data()
        with memoryview(self._inbox) as inbox:
            body = bytes(inbox[self._start : self._start + length])
        self._consume(length)
        return body

    async def _large_body(self, length: int) -> bytes:
        """Return a body the socket writes straight into a buffer of its own."""
        held = min(self._end - self._start, length)
        if len(self._spare) < length:
            self._spare = bytearray(length)
        body = memoryview(self._spare)[:length]
        body[:held] = self._inbox[self._start : self._start + held]
        self._consume(held)
        self._body, self._filled = body, held
        self._flow()
        try:
            while self._filled < length:
                self._check_ended(length, self._filled)
                self._wake_at(min(length - self._filled, _WAKE_AT))
                await self._wait_for_data()
        finally:
            self._wake_at(1)
            self._body = None
            self._flow()
        with body:
            data = bytes(body)
        if len(self._spare) > _SPARE_KEPT:
            self._spare = bytearray()
        return data

    def _check_ended(self, length: int, held: int) -> None:
        """Raise ProtocolError if the stream ended before ``length`` body bytes arrived."""
        if self._error is not None:
            raise self._error
        if self._eof:
            raise ProtocolError(f"stream ended after {held} of {length} frame bytes")

    def _consume(self, count: int) -> None:
        """Drop ``count`` read bytes from the front of the inbox."""
        self._start += count
        if self._start == self._end:
            self._start = self._end = 0
        self._flow()

    def _compact(self) -> None:
        """Move unread bytes to the front of the inbox."""
        pending = self._end - self._start
        self._inbox[:pending] = self._inbox[self._start : self._end]
        self._start, self._end = 0, pending

    async def _wait_for_data(self) -> None:
        """Wait until the transport delivered more bytes, or the stream ended."""
        if self._eof:
            return
        self._data_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    def _wake(self) -> None:
        """Wake the reader waiting for data."""
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _flow(self) -> None:
        """Read from the socket only while there is room for what it brings.

        Reading pauses once a large body is complete (the next frame's bytes go to the
        inbox) or the inbox holds half its size unread, so a compaction moves at most
        half the inbox and frees at least half, and a small body always fits.
        """
        if self._body is not None:
            full = self._filled == len(self._body)
        else:
            full = self._end - self._start >= _SMALL_BODY
        if self._transport is None or full == self._paused_reading:
            return
        self._paused_reading = full
        if full:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _wake_at(self, count: int) -> None:
        """Have the socket report readable only once ``count`` bytes wait in it."""
        sock = self.get_extra_info("socket")
        if sock is not None and not self._eof:
            with contextlib.suppress(OSError):  # a closed socket: the reader sees the end
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
