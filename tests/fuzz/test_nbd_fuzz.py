"""Fuzzing the NBD server of a real business node: handshake options and transmission.

The disk is filled with a pattern first. Random options (wrong magic, lying lengths,
truncated data) and random requests (unknown commands, bad flags, offsets past the end,
huge lengths, truncated writes) must never crash or hang the server, and the requests
that would change the disk are all invalid ones here, so the disk must read back exactly
as before. Afterwards a real qemu-io still writes and reads the export correctly.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.cli.conftest import Deployment
from tests.e2e.qemu import qemu_io
from tests.fuzz.conftest import FUZZ_DISK, FUZZ_DISK_SIZE, FUZZ_VM
from tests.fuzz.nodes import NetworkClients, run_file
from tests.fuzz.tally import fuzz, ran

# Spelled out from the protocol document rather than imported, so the test checks the wire.
NBDMAGIC, IHAVEOPT, REQUEST_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x25609513
OPT_EXPORT_NAME, OPT_GO, OPT_STRUCTURED_REPLY = 1, 7, 8
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZEROES, CMD_STATUS = range(8)
FLAG_FUA, FLAG_UNKNOWN = 1 << 0, 1 << 15
EXPORT = f"{FUZZ_VM}/{FUZZ_DISK}"
WAIT = 10.0
PATTERN = 0xA5


class Export:
    """The fuzzed export: where it is served, and its contents read over the node protocol."""

    def __init__(self, deployment: Deployment, clients: NetworkClients) -> None:
        self.port = int(run_file(deployment.root, "business-1")["nbd_port"])
        self.url = f"nbd://127.0.0.1:{self.port}/{EXPORT}"
        self.clients = clients

    def contents(self) -> bytes:
        args = {"vm": FUZZ_VM, "resource_id": FUZZ_DISK, "offset": 0, "length": FUZZ_DISK_SIZE}
        answer = self.clients.call("business-1", "volume.read", args)
        assert isinstance(answer, dict), answer
        data: bytes = answer["data"]
        return data


@pytest.fixture(scope="module")
def export(network: Deployment) -> Iterator[Export]:
    """The fuzz disk, filled with a pattern through a real qemu-io."""
    clients = NetworkClients(network.root)
    try:
        served = Export(network, clients)
        qemu_io(served.url, f"write -P {PATTERN} 0 {FUZZ_DISK_SIZE}")
        yield served
    finally:
        clients.close()


def string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def go_option(name: bytes = EXPORT.encode()) -> bytes:
    data = string(name) + struct.pack(">H", 0)
    return struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data


@st.composite
def options(draw: st.DrawFn) -> bytes:
    """One option as a client sends it: magic, option, length and data, any of them wrong."""
    magic = draw(st.sampled_from([IHAVEOPT, IHAVEOPT, IHAVEOPT, 0, NBDMAGIC, 2**64 - 1]))
    option = draw(st.integers(0, 12) | st.integers(0, 2**32 - 1))
    data = draw(
        st.binary(max_size=48)
        | st.builds(lambda n, q: string(n) + q, st.binary(max_size=40), st.binary(max_size=12))
        | st.just(string(EXPORT.encode()) + struct.pack(">I", 1) + string(b"base:allocation"))
    )
    length = draw(st.sampled_from([len(data)] * 3 + [0, len(data) + 7, 2**16 + 1, 2**32 - 1]))
    return struct.pack(">QII", magic, option, length) + data


def close_and_drain(sock: socket.socket) -> bool:
    """Stop sending and read until the server closes; False if it is still open after WAIT."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(WAIT)
        while sock.recv(1 << 20):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset, or already gone: closed all the same
        return True
    return True


def exchange(port: int, client_flags: bytes, rest: bytes) -> bool:
    """Greet the server, send the client flags and `rest`; True when the server then closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        greeting = b""
        while len(greeting) < 18 and (piece := sock.recv(18 - len(greeting))):
            greeting += piece
        assert struct.unpack(">QQ", greeting[:16]) == (NBDMAGIC, IHAVEOPT)
        try:
            sock.sendall(client_flags + rest)
        except OSError:
            return True  # the server already closed: it did not wait for the rest
        return close_and_drain(sock)


@fuzz(100)
@given(
    st.sampled_from([struct.pack(">I", 3), struct.pack(">I", 1)]) | st.binary(max_size=5),
    st.lists(options(), max_size=4).map(b"".join),
)
@example(struct.pack(">I", 3), struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 2**32 - 1))
@example(struct.pack(">I", 3), struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0" * 10)
@example(struct.pack(">I", 3), struct.pack(">QII", 0, OPT_GO, 0))  # wrong option magic
@example(b"\x00", b"")  # client flags cut short
def test_random_handshakes_never_crash_or_hang_the_server(
    export: Export, flags: bytes, rest: bytes
) -> None:
    ran("nbd: handshake options")
    before = export.contents()
    assert exchange(export.port, flags, rest), "the NBD server left the connection hanging"
    assert export.contents() == before


def request(flags: int, command: int, offset: int, length: int) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, 7, offset, length)


OFFSETS = st.one_of(st.integers(0, FUZZ_DISK_SIZE), st.integers(0, 2**64 - 1))
LENGTHS = st.one_of(
    st.integers(0, 1 << 16), st.sampled_from([0, 1, 1 << 25, (1 << 25) + 1, 2**32 - 1])
)


@st.composite
def harmless(draw: st.DrawFn) -> bytes:
    """A request that may be valid but changes nothing: a read, flush, cache, status, unknown."""
    command = draw(
        st.sampled_from([CMD_READ, CMD_FLUSH, CMD_CACHE, CMD_STATUS]) | st.integers(8, 65535)
    )
    flags = draw(st.integers(0, 65535))
    return request(flags, command, draw(OFFSETS), draw(LENGTHS))


@st.composite
def invalid_changes(draw: st.DrawFn) -> bytes:
    """A write, trim or write-zeroes the server must refuse: past the end, or unknown flags."""
    command = draw(st.sampled_from([CMD_WRITE, CMD_TRIM, CMD_ZEROES]))
    length = draw(st.integers(1, 1 << 16))
    if draw(st.booleans()):
        offset = draw(st.integers(FUZZ_DISK_SIZE - length + 1, 2**64 - 1 - length))
        flags = draw(st.sampled_from([0, FLAG_FUA]))
    else:
        offset = draw(st.integers(0, FUZZ_DISK_SIZE - length))
        flags = FLAG_UNKNOWN | draw(st.integers(0, 255))
    payload = draw(st.binary(min_size=1, max_size=1).map(lambda b: b * length))
    return request(flags, command, offset, length) + (payload if command == CMD_WRITE else b"")


@st.composite
def truncated_write(draw: st.DrawFn) -> bytes:
    """A valid write whose data stops short (the last thing the client sends)."""
    length = draw(st.integers(2, 1 << 16))
    offset = draw(st.integers(0, FUZZ_DISK_SIZE - length))
    return request(0, CMD_WRITE, offset, length) + bytes(draw(st.integers(0, length - 1)))


@fuzz(100)
@given(
    st.booleans(),
    st.lists(harmless() | invalid_changes(), max_size=6).map(b"".join),
    st.one_of(st.just(b""), truncated_write(), st.binary(min_size=1, max_size=27)),
)
@example(False, request(0, CMD_WRITE, FUZZ_DISK_SIZE, 4096) + bytes(4096), b"")
@example(False, request(0, CMD_READ, 2**64 - 4096, 4096), b"")  # an offset that wraps
@example(False, request(0, CMD_WRITE, 0, 2**32 - 1), b"")  # a 4 GiB write
@example(True, request(0, CMD_STATUS, 0, 2**32 - 1), b"")
@example(False, b"", request(0, CMD_WRITE, 0, 4096) + bytes(100))
def test_random_requests_never_crash_the_server_or_change_the_disk(
    export: Export, structured: bool, requests: bytes, tail: bytes
) -> None:
    ran("nbd: transmission requests")
    before = export.contents()
    negotiate = b""
    if structured:
        negotiate += struct.pack(">QII", IHAVEOPT, OPT_STRUCTURED_REPLY, 0)
    negotiate += go_option()
    done = exchange(export.port, struct.pack(">I", 3), negotiate + requests + tail)
    assert done, "the NBD server left the connection hanging"
    assert export.contents() == before


def test_qemu_io_still_writes_and_reads_the_export_after_the_fuzzing(export: Export) -> None:
    qemu_io(export.url, "write -P 0x3c 4096 8192", "read -P 0x3c 4096 8192")
    qemu_io(export.url, f"read -P {PATTERN} 0 4096", f"read -P {PATTERN} 12288 4096")
    assert export.contents()[4096:12288] == b"\x3c" * 8192
