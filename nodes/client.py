"""The client side of the node protocol: one authenticated connection, many calls in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from nodes.auth import authenticate_client
from nodes.errors import NodeError, NodeUnreachable, ProtocolError, RemoteError, RequestTimeout
from nodes.frame_stream import FrameStream
from nodes.wire import MAX_FRAME, read_frame, write_frame


class NodeClient:
    """A connection to one node; each call sends a request and awaits the answer with its id.

    A reader task, owned by the client and cancelled by :meth:`close`, hands each answer to
    the call waiting for its id, so answers may arrive in any order.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        *,
        name: str = "cli",
        peer: str = "node",
        timeout: float = 30.0,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.peer = peer
        self.timeout = timeout
        self.max_frame = max_frame
        self._secret = secret
        self._last_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: FrameStream | None = None
        self._write_lock = asyncio.Lock()
        self._reader_task: asyncio.Task[None] | None = None
        self._lost: NodeError | None = None

    @property
    def address(self) -> str:
        """Return the node's address as host:port."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and authenticate both sides."""
        if self._writer is not None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                loop = asyncio.get_running_loop()
                _transport, stream = await loop.create_connection(FrameStream, self.host, self.port)
        except TimeoutError as err:
            raise self._unreachable(f"no connection within {self.timeout:g} s") from err
        except OSError as err:
            raise self._unreachable(err.strerror or str(err)) from err
        try:
            self.peer = await authenticate_client(
                stream, stream, self._secret, self.name, self.timeout
            )
        except BaseException as err:
            await _close_writer(stream, self.timeout)
            if isinstance(err, OSError):
                raise self._unreachable(err.strerror or str(err)) from err
            raise
        self._writer = stream
        self._reader_task = asyncio.create_task(self._read_answers(stream))

    async def call(
        self, op: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run ``op`` on the node and return its result; raise RemoteError if it failed there."""
        if self._writer is None:
            raise RuntimeError("NodeClient.call before connect()")
        if self._lost is not None:
            raise self._lost.with_traceback(None)
        seconds = self.timeout if timeout is None else timeout
        self._last_id += 1
        request_id = self._last_id
        answer = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        request = {"id": request_id, "op": op, "args": dict(args or {})}
        try:
            async with asyncio.timeout(seconds):
                async with self._write_lock:
                    await write_frame(self._writer, request, self.max_frame)
                reply = await answer
        except TimeoutError as err:
            raise RequestTimeout(op, seconds) from err
        except OSError as err:
            raise self._unreachable(err.strerror or str(err)) from err
        finally:
            self._pending.pop(request_id, None)
            if answer.done() and not answer.cancelled():
                answer.exception()  # a failure that raced the timeout is not worth a warning
        return _result(reply)

    async def close(self) -> None:
        """Stop the reader task, fail calls still waiting and close the connection."""
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.wait([self._reader_task])
            if not self._reader_task.cancelled():
                self._reader_task.result()
            self._reader_task = None
        self._fail_pending(self._unreachable("connection closed by the client"))
        if self._writer is not None:
            await _close_writer(self._writer, self.timeout)
            self._writer = None

    async def _read_answers(self, reader: FrameStream) -> None:
        """Hand every answer frame to the call waiting for its id, until the stream ends."""
        try:
            while True:
                frame = await read_frame(reader, self.max_frame)
                if frame is None:
                    raise self._unreachable("connection closed by the node")
                self._dispatch(frame)
        except NodeError as err:
            self._fail_pending(err)
        except OSError as err:
            self._fail_pending(self._unreachable(err.strerror or str(err)))

    def _dispatch(self, frame: dict[str, Any]) -> None:
        """Hand an answer to its waiting call; late answers to abandoned calls are dropped."""
        request_id = frame.get("id")
        if not isinstance(request_id, int) or not 0 < request_id <= self._last_id:
            raise ProtocolError(f"answer with an id never requested: {request_id!r}")
        waiting = self._pending.get(request_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(frame)

    def _fail_pending(self, error: NodeError) -> None:
        """Remember that the connection is gone and fail every call still waiting."""
        self._lost = error
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(error)

    def _unreachable(self, reason: str) -> NodeUnreachable:
        """Return the error for a connection to this node that failed for ``reason``."""
        return NodeUnreachable(self.peer, self.address, reason)


def call_sync(
    host: str,
    port: int,
    secret: bytes,
    op: str,
    args: Mapping[str, Any] | None = None,
    *,
    peer: str = "node",
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Connect, run one call and disconnect, from synchronous code."""

    async def call_once() -> dict[str, Any]:
        async with NodeClient(host, port, secret, peer=peer, timeout=timeout) as client:
            return await client.call(op, args)

    return asyncio.run(call_once())


def _result(reply: dict[str, Any]) -> dict[str, Any]:
    """Return the result of an answer frame, or raise the error it reports."""
    if "error" in reply:
        error = reply["error"]
        if not isinstance(error, dict):
            raise ProtocolError("answer has an 'error' that is not a map")
        kind, message, exit_code = error.get("kind"), error.get("message"), error.get("exit_code")
        if not (isinstance(kind, str) and isinstance(message, str) and isinstance(exit_code, int)):
            raise ProtocolError("answer has an ill-formed 'error'")
        raise RemoteError(kind, message, exit_code)
    result = reply.get("result")
    if not isinstance(result, dict):
        raise ProtocolError("answer has no map 'result'")
    return result


async def _close_writer(writer: FrameStream, timeout: float) -> None:
    """Close a connection and wait, within ``timeout``, until its transport is gone."""
    writer.close()
    with contextlib.suppress(OSError):  # includes TimeoutError
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
