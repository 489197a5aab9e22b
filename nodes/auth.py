"""Mutual challenge-response authentication of a connection with the deployment's secret.

Both sides prove they hold the secret without sending it; each proof covers a fresh
32-byte nonce chosen by the other side, so a recorded handshake cannot be replayed, and
the labels ``client``/``server`` keep one side's proof from being reflected back::

    server → client   {"hello": "vmsnap/1", "node": server name, "nonce": Ns}
    client → server   {"node": client name, "nonce": Nc,
                       "proof": HMAC-SHA256(secret, b"client" + Ns + Nc)}
    server → client   {"proof": HMAC-SHA256(secret, b"server" + Nc + Ns)}
                   or {"error": "authentication failed"}, then the server closes

Handshake frames are small and arrive before the peer is trusted, so they are read with
a tight frame limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from typing import Any

from nodes.errors import AuthenticationFailed, ProtocolError, RequestTimeout
from nodes.frame_stream import FrameStream
from nodes.wire import read_frame, write_frame

PROTOCOL = "vmsnap/1"
"""Name and version of the protocol a server announces in its hello."""

HANDSHAKE_MAX_FRAME = 1024
"""Largest handshake frame, in bytes, either side accepts."""

NONCE_SIZE = 32
_MAX_NAME = 128


async def authenticate_server(
    reader: asyncio.StreamReader | FrameStream,
    writer: asyncio.StreamWriter | FrameStream,
    secret: bytes,
    node_name: str,
    timeout: float,
) -> str:
    """Run the server side of the handshake and return the name the client gave."""
    server_nonce = secrets.token_bytes(NONCE_SIZE)
    try:
        async with asyncio.timeout(timeout):
            hello = {"hello": PROTOCOL, "node": node_name, "nonce": server_nonce}
            await write_frame(writer, hello, HANDSHAKE_MAX_FRAME)
            answer = await _read_handshake(reader)
            peer = _name(answer)
            client_nonce = _nonce(answer)
            expected = _proof(secret, b"client", server_nonce, client_nonce)
            if not hmac.compare_digest(_bytes(answer, "proof"), expected):
                refusal = {"error": "authentication failed"}
                await write_frame(writer, refusal, HANDSHAKE_MAX_FRAME)
                raise AuthenticationFailed(peer)
            proof = _proof(secret, b"server", client_nonce, server_nonce)
            await write_frame(writer, {"proof": proof}, HANDSHAKE_MAX_FRAME)
    except TimeoutError as err:
        raise RequestTimeout("authentication", timeout) from err
    return peer


async def authenticate_client(
    reader: asyncio.StreamReader | FrameStream,
    writer: asyncio.StreamWriter | FrameStream,
    secret: bytes,
    client_name: str,
    timeout: float,
) -> str:
    """Run the client side of the handshake and return the server's node name."""
    client_nonce = secrets.token_bytes(NONCE_SIZE)
    try:
        async with asyncio.timeout(timeout):
            hello = await _read_handshake(reader)
            if hello.get("hello") != PROTOCOL:
                raise ProtocolError(f"peer speaks {hello.get('hello')!r}, not {PROTOCOL}")
            node = _name(hello)
            server_nonce = _nonce(hello)
            proof = _proof(secret, b"client", server_nonce, client_nonce)
            answer = {"node": client_name, "nonce": client_nonce, "proof": proof}
            await write_frame(writer, answer, HANDSHAKE_MAX_FRAME)
            verdict = await _read_handshake(reader)
    except TimeoutError as err:
        raise RequestTimeout("authentication", timeout) from err
    if "error" in verdict:
        raise AuthenticationFailed(node)
    expected = _proof(secret, b"server", client_nonce, server_nonce)
    if not hmac.compare_digest(_bytes(verdict, "proof"), expected):
        raise AuthenticationFailed(node)
    return node


def _proof(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    """Return the HMAC that proves knowledge of ``secret`` over two nonces."""
    return hmac.digest(secret, label + first + second, hashlib.sha256)


async def _read_handshake(reader: asyncio.StreamReader | FrameStream) -> dict[str, Any]:
    """Read one handshake frame; a closed stream is a protocol violation here."""
    frame = await read_frame(reader, HANDSHAKE_MAX_FRAME)
    if frame is None:
        raise ProtocolError("peer closed the connection during authentication")
    return frame


def _bytes(frame: dict[str, Any], key: str) -> bytes:
    """Return the byte-string field ``key`` of a handshake frame."""
    value = frame.get(key)
    if not isinstance(value, bytes):
        raise ProtocolError(f"handshake field {key!r} is missing or not bytes")
    return value


def _nonce(frame: dict[str, Any]) -> bytes:
    """Return the nonce of a handshake frame, checking its size."""
    nonce = _bytes(frame, "nonce")
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError(f"handshake nonce has {len(nonce)} bytes, not {NONCE_SIZE}")
    return nonce


def _name(frame: dict[str, Any]) -> str:
    """Return the node name of a handshake frame, fit to appear in a log line."""
    name = frame.get("node")
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME or not name.isprintable():
        raise ProtocolError("handshake field 'node' is missing or not a printable name")
    return name
