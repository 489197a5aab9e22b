"""Frames read through a real FrameStream connection on loopback, from bytes a raw peer sends."""

from __future__ import annotations

import asyncio
from typing import Any

from nodes.errors import ProtocolError
from nodes.frame_stream import FrameStream
from nodes.wire import MAX_FRAME, read_frame

Outcome = tuple[list[dict[str, Any]], str | None]
"""The frames read, then the ProtocolError that ended the stream (None: a clean end)."""


async def read_over_loopback(
    data: bytes,
    max_frame: int = MAX_FRAME,
    *,
    piece: int = 1 << 20,
    body_timeout: float = 5.0,
    close: bool = True,
    pause: float = 0.0,
) -> Outcome:
    """Send ``data`` in pieces of ``piece`` bytes to a FrameStream and read every frame.

    The reader waits ``pause`` seconds after each frame, so the sender can run ahead.
    """
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[FrameStream] = loop.create_future()
    server = await loop.create_server(lambda: FrameStream(accepted.set_result), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stream = await accepted

    async def send() -> None:
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
            await writer.drain()
        if close:
            writer.write_eof()

    sending = asyncio.create_task(send())
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            while (
                frame := await read_frame(stream, max_frame, body_timeout=body_timeout)
            ) is not None:
                frames.append(frame)
                await asyncio.sleep(pause)
    except ProtocolError as err:
        return frames, str(err)
    finally:
        sending.cancel()
        await asyncio.wait([sending])
        stream.close()
        writer.close()
        server.close()
        await server.wait_closed()
    return frames, None


def read_from_stream_reader(
    data: bytes, max_frame: int = MAX_FRAME, *, body_timeout: float = 5.0
) -> Outcome:
    """The same, read with an asyncio StreamReader that holds ``data`` and then its end."""

    async def scenario() -> Outcome:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        frames: list[dict[str, Any]] = []
        try:
            while (
                frame := await read_frame(reader, max_frame, body_timeout=body_timeout)
            ) is not None:
                frames.append(frame)
        except ProtocolError as err:
            return frames, str(err)
        return frames, None

    return asyncio.run(scenario())
