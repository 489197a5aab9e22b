"""The request server every node process runs: authenticated connections, concurrent requests.

After the handshake (``nodes.auth``) a connection carries request and answer frames::

    request   {"id": int, "op": str, "args": map}
    answer    {"id": int, "result": map}
           or {"id": int, "error": {"kind": str, "message": str, "exit_code": int}}

Requests on one connection run concurrently and may be answered in any order; the id ties
an answer to its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.errors import VmsnapError
from nodes.auth import authenticate_server
from nodes.errors import AuthenticationFailed, ProtocolError, RemoteError, RequestTimeout
from nodes.frame_stream import FrameStream
from nodes.wire import MAX_FRAME, encode_frame, read_frame

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Serves one operation: takes the request's args, returns the result map."""

log = logging.getLogger("vmsnap.node")


@dataclass(frozen=True)
class Request:
    """One decoded request frame."""

    id: int
    op: str
    args: dict[str, Any]

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Request:
        """Return the request a frame holds; raise ProtocolError when it is malformed."""
        request_id, op, args = frame.get("id"), frame.get("op"), frame.get("args")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise ProtocolError("request has no integer 'id'")
        if not isinstance(op, str):
            raise ProtocolError("request has no string 'op'")
        if not isinstance(args, dict):
            raise ProtocolError("request has no map 'args'")
        return cls(request_id, op, args)


class _Connection:
    """The write side of one authenticated connection, shared by its request tasks."""

    def __init__(self, writer: FrameStream, peer: str, max_frame: int, timeout: float) -> None:
        self.writer = writer
        self.peer = peer
        self.max_frame = max_frame
        self.timeout = timeout
        self._lock = asyncio.Lock()

    async def send(self, frame: bytes) -> None:
        """Write one whole frame; frames of concurrent answers never interleave."""
        async with self._lock, asyncio.timeout(self.timeout):
            self.writer.write(frame)
            await self.writer.drain()


class NodeServer:
    """Accepts authenticated connections and answers their requests with handlers by op."""

    def __init__(
        self,
        name: str,
        secret: bytes,
        handlers: Mapping[str, Handler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        max_frame: int = MAX_FRAME,
        timeout: float = 30.0,
        reply_delay: float = 0.0,
    ) -> None:
        """Serve on `host`:`port`, or on the listening socket `sock` when one is given."""
        self.name = name
        self._sock = sock
        self._reply_delay = reply_delay
        self._secret = secret
        self._handlers: dict[str, Handler] = {"ping": self._ping, **handlers}
        self._host = host
        self._port = port
        self._max_frame = max_frame
        self._timeout = timeout
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], FrameStream] = {}
        self._closing = False
        self._address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        """Listen and return the host and port actually bound."""
        if self._closing:
            raise RuntimeError(f"node server {self.name} is closed")
        if self._address is None:
            loop = asyncio.get_running_loop()
            if self._sock is not None:
                self._server = await loop.create_server(
                    lambda: FrameStream(self._accept), sock=self._sock
                )
            else:
                self._server = await loop.create_server(
                    lambda: FrameStream(self._accept), self._host, self._port
                )
            host, port = self._server.sockets[0].getsockname()[:2]
            self._address = str(host), int(port)
        return self._address

    async def serve_forever(self) -> None:
        """Serve until cancelled or closed, starting first if needed."""
        if self._closing:
            return
        await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            # close() from elsewhere also ends serve_forever by cancelling it: a normal end.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                await self.close()
                raise

    async def close(self) -> None:
        """Stop listening, cancel every connection and wait until all are closed."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        connections = dict(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections)
        for writer in connections.values():
            # A task cancelled before its first step never ran its own cleanup.
            await self._close_writer(writer)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, stream: FrameStream) -> None:
        """Serve a new connection in a task owned by this server (close() cancels it)."""
        if self._closing:
            stream.close()
            return
        task = asyncio.create_task(self._connection(stream))
        self._connections[task] = stream
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Drop a finished connection task, reporting a failure nothing else caught."""
        self._connections.pop(task, None)
        if not task.cancelled() and (err := task.exception()) is not None:
            log.error("connection task failed", exc_info=err)

    async def _connection(self, stream: FrameStream) -> None:
        """Serve one connection from handshake to close."""
        try:
            await self._serve(stream, _address(stream))
        finally:
            await self._close_writer(stream)

    async def _close_writer(self, writer: FrameStream) -> None:
        """Close a connection's transport and wait, within the timeout, until it is gone."""
        writer.close()
        with contextlib.suppress(OSError):  # includes TimeoutError
            async with asyncio.timeout(self._timeout):
                await writer.wait_closed()

    async def _serve(self, stream: FrameStream, address: str) -> None:
        """Authenticate the peer, then answer its requests until it leaves or misbehaves."""
        try:
            client = await authenticate_server(
                stream, stream, self._secret, self.name, self._timeout
            )
        except (AuthenticationFailed, ProtocolError, RequestTimeout) as err:
            log.warning("rejected connection from %s: %s", address, err)
            return
        except OSError as err:
            log.info("connection from %s lost during authentication: %s", address, err)
            return
        peer = f"{client} at {address}"
        log.debug("authenticated %s", peer)
        connection = _Connection(stream, peer, self._max_frame, self._timeout)
        try:
            await self._serve_requests(stream, connection)
        except* ProtocolError as group:
            log.warning("closing connection from %s: %s", peer, group.exceptions[0])
        except* (OSError, TimeoutError) as group:
            log.info("connection from %s lost: %r", peer, group.exceptions[0])

    async def _serve_requests(self, reader: FrameStream, connection: _Connection) -> None:
        """Read requests and run each as a task owned by this connection."""
        async with asyncio.TaskGroup() as requests:
            while True:
                frame = await read_frame(reader, self._max_frame, body_timeout=self._timeout)
                if frame is None:
                    return
                request = Request.from_frame(frame)
                requests.create_task(self._answer(request, connection))

    async def _answer(self, request: Request, connection: _Connection) -> None:
        """Run one request and send its answer."""
        answer = await self._run(request, connection.peer)
        try:
            frame = encode_frame(answer, connection.max_frame)
        except ProtocolError as err:
            log.exception("answer to %s from %s cannot be sent", request.op, connection.peer)
            frame = encode_frame(self._internal_error(request.id, err), connection.max_frame)
        await connection.send(frame)

    async def _run(self, request: Request, peer: str) -> dict[str, Any]:
        """Return the answer map to ``request``, turning failures into error answers."""
        handler = self._handlers.get(request.op)
        if handler is None:
            message = f"unknown operation {request.op!r} on node {self.name}"
            return _error(request.id, "UnknownOperation", message, 2)
        if self._reply_delay:
            await asyncio.sleep(self._reply_delay)  # an injected slow node (VMSNAP_REPLY_DELAY)
        try:
            result = await handler(request.args)
        except VmsnapError as err:
            kind = err.kind if isinstance(err, RemoteError) else type(err).__name__
            return _error(request.id, kind, err.message, err.exit_code)
        except Exception as err:
            log.exception("operation %s from %s failed", request.op, peer)
            return self._internal_error(request.id, err)
        return {"id": request.id, "result": result}

    def _internal_error(self, request_id: int, err: Exception) -> dict[str, Any]:
        """Return the error answer for a failure the node did not expect."""
        message = f"internal error on node {self.name}: {type(err).__name__}: {err}"
        return _error(request_id, "InternalError", message, 1)

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        """Answer the built-in liveness probe."""
        return {"node": self.name, "pid": os.getpid()}


def _error(request_id: int, kind: str, message: str, exit_code: int) -> dict[str, Any]:
    """Return an error answer."""
    return {"id": request_id, "error": {"kind": kind, "message": message, "exit_code": exit_code}}


def _address(writer: FrameStream) -> str:
    """Return the peer address of a connection as host:port."""
    peername = writer.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return str(peername)
