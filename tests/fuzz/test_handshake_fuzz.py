"""Fuzzing a real node's connection before and just after authentication.

Garbage before or inside the handshake ends that connection without an answer beyond the
refusal, and frames that are not requests end the authenticated connection; either way
the node process keeps serving good clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nodes.auth import authenticate_client
from nodes.errors import ProtocolError
from nodes.wire import encode_frame, read_frame
from tests.cli.conftest import Deployment
from tests.fuzz.nodes import NetworkClients
from tests.fuzz.tally import fuzz, ran
from tests.fuzz.test_wire_fuzz import items

NODE = "controller"
WAIT = 10.0


@pytest.fixture(scope="module")
def clients(network: Deployment) -> Iterator[NetworkClients]:
    connected = NetworkClients(network.root)
    try:
        yield connected
    finally:
        connected.close()


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


HANDSHAKE_GARBAGE = st.one_of(
    st.binary(max_size=64),
    items(depth=2).map(frame),
    st.fixed_dictionaries(
        {},
        optional={
            "node": st.one_of(st.text(max_size=200), st.binary(max_size=4), st.integers()),
            "nonce": st.one_of(st.binary(max_size=40), st.text(max_size=4)),
            "proof": st.one_of(st.binary(max_size=40), st.none()),
        },
    ).map(lambda m: frame(cbor2.dumps(m))),
    st.integers(1025, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
)


def closed_by_node(sock: socket.socket) -> bool:
    """Read until the node closes the connection; False if it is still open after WAIT."""
    sock.settimeout(WAIT)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset, or no longer connected: closed all the same
        return True
    return True


@fuzz(60)
@given(st.booleans(), st.lists(HANDSHAKE_GARBAGE, min_size=1, max_size=3))
@example(True, [struct.pack(">I", 2**32 - 1)])  # a 4 GiB handshake frame
@example(True, [frame(cbor2.dumps({"node": "x" * 129, "nonce": bytes(32), "proof": bytes(32)}))])
@example(False, [b"\x00\x00\x00\x05\xa1"])  # a frame cut short
def test_garbage_in_the_handshake_closes_that_connection_and_the_node_serves_on(
    clients: NetworkClients, read_hello: bool, garbage: list[bytes]
) -> None:
    ran("auth: handshake garbage")
    with socket.create_connection(("127.0.0.1", clients.port(NODE)), timeout=WAIT) as sock:
        if read_hello:
            sock.recv(4096)
        with contextlib.suppress(OSError):
            for piece in garbage:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        assert closed_by_node(sock)
    assert clients.call(NODE, "ping", {})["node"] == NODE


ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.integers(-(2**64), 2**64 - 1), st.booleans(), st.text(max_size=3)),
        "op": st.one_of(st.sampled_from(["ping", "ledger.head", "vm.list"]), st.integers(0, 9)),
        "args": st.one_of(
            st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63)), st.lists(st.none())
        ),
        "extra": st.binary(max_size=4),
    },
)


async def send_authenticated(port: int, secret: bytes, frames: list[bytes]) -> list[Any]:
    """Authenticate, send `frames`, and return the answers read until the node closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers: list[Any] = []
    try:
        await authenticate_client(reader, writer, secret, "fuzz", WAIT)
        with contextlib.suppress(OSError):  # the node may close before it has read them all
            for raw in frames:
                writer.write(raw)
            writer.write_eof()
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ProtocolError, OSError):
                while (answer := await read_frame(reader)) is not None:
                    answers.append(answer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answers


@fuzz(40)
@given(st.lists(ENVELOPES.map(encode_frame) | items(depth=1).map(frame), min_size=1, max_size=4))
@example([encode_frame({"id": 1, "op": "ping"})])  # no args
@example([encode_frame({"id": True, "op": "ping", "args": {}})])  # a boolean id
def test_frames_that_are_not_requests_get_an_error_answer_or_a_close(
    clients: NetworkClients, frames: list[bytes]
) -> None:
    ran("auth: request envelopes")
    answers = asyncio.run(send_authenticated(clients.port(NODE), clients.secret, frames))
    for answer in answers:
        assert set(answer) in ({"id", "result"}, {"id", "error"}), answer
        if "error" in answer:
            assert answer["error"]["kind"] != "InternalError", answer
    assert clients.call(NODE, "ping", {})["node"] == NODE
