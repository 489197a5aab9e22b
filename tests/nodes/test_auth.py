"""The wire handshake resists replay and a wrong secret, in either direction.

A recording proxy sits between a real client and a real server on loopback; what it
recorded is then played back, verbatim, on fresh connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from nodes.auth import HANDSHAKE_MAX_FRAME, authenticate_server
from nodes.client import NodeClient
from nodes.errors import AuthenticationFailed
from nodes.wire import read_frame, write_frame
from tests.nodes.test_server import HOST, SECRET, is_closed_by_peer, serving


@dataclass
class Recording:
    """The bytes each side sent through the proxy, in order."""

    upstream: bytearray = field(default_factory=bytearray)
    downstream: bytearray = field(default_factory=bytearray)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: bytearray) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            log.extend(data)
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def recording_proxy(port: int) -> AsyncIterator[tuple[int, Recording]]:
    """A loopback proxy to `port` that records both directions of every connection."""
    recording = Recording()
    pumps: list[asyncio.Task[None]] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, port)
        pumps.append(asyncio.create_task(_pump(reader, up_writer, recording.upstream)))
        pumps.append(asyncio.create_task(_pump(up_reader, writer, recording.downstream)))

    proxy = await asyncio.start_server(relay, HOST, 0)
    try:
        yield proxy.sockets[0].getsockname()[1], recording
    finally:
        proxy.close()
        await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), 10)
        await proxy.wait_closed()


def counting() -> tuple[dict[str, int], Any]:
    calls = {"n": 0}

    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        calls["n"] += 1
        return {"done": calls["n"]}

    return calls, handler


def test_a_recorded_client_session_replayed_on_a_new_connection_is_refused() -> None:
    calls, handler = counting()

    async def scenario() -> dict[str, Any] | None:
        async with serving({"count": handler}) as port:
            async with (
                recording_proxy(port) as (proxied, recording),
                NodeClient(HOST, proxied, SECRET) as client,
            ):
                assert await client.call("count", {}) == {"done": 1}
            reader, writer = await asyncio.open_connection(HOST, port)
            await read_frame(reader, HANDSHAKE_MAX_FRAME)  # a fresh hello, with a fresh nonce
            writer.write(bytes(recording.upstream))
            verdict = await read_frame(reader, HANDSHAKE_MAX_FRAME)
            assert await is_closed_by_peer(reader)
            writer.close()
            return verdict

    assert asyncio.run(scenario()) == {"error": "authentication failed"}
    assert calls["n"] == 1, "the replayed request was never run"


def test_a_recorded_server_side_replayed_to_a_new_client_is_refused() -> None:
    async def scenario() -> None:
        async with (
            serving() as port,
            recording_proxy(port) as (proxied, recording),
            NodeClient(HOST, proxied, SECRET) as client,
        ):
            await client.call("echo", {})
        recorded = bytes(recording.downstream)

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(recorded)  # the genuine server's hello and proof, from another session
            with contextlib.suppress(OSError):
                await writer.drain()
                await reader.read()
            writer.close()

        fake = await asyncio.start_server(impostor, HOST, 0)
        try:
            with pytest.raises(AuthenticationFailed, match="authentication with n1 failed"):
                async with NodeClient(HOST, fake.sockets[0].getsockname()[1], SECRET):
                    pass
        finally:
            fake.close()
            await fake.wait_closed()

    asyncio.run(scenario())


def test_a_server_with_the_wrong_secret_is_refused_by_the_client() -> None:
    async def scenario() -> None:
        async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await authenticate_server(reader, writer, b"another deployment", "n1", 5.0)
            writer.close()

        fake = await asyncio.start_server(wrong, HOST, 0)
        try:
            with pytest.raises(AuthenticationFailed):
                async with NodeClient(HOST, fake.sockets[0].getsockname()[1], SECRET):
                    pass
        finally:
            fake.close()
            await fake.wait_closed()

    asyncio.run(scenario())


def test_a_server_reflecting_the_clients_own_proof_is_refused() -> None:
    async def scenario() -> None:
        async def mirror(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonce = bytes(32)
            await write_frame(writer, {"hello": "vmsnap/1", "node": "n1", "nonce": nonce}, 1024)
            answer = await read_frame(reader, 1024)
            assert answer is not None
            await write_frame(writer, {"proof": answer["proof"]}, 1024)
            with contextlib.suppress(OSError):
                await reader.read()
            writer.close()

        fake = await asyncio.start_server(mirror, HOST, 0)
        try:
            with pytest.raises(AuthenticationFailed):
                async with NodeClient(HOST, fake.sockets[0].getsockname()[1], SECRET):
                    pass
        finally:
            fake.close()
            await fake.wait_closed()

    asyncio.run(scenario())
