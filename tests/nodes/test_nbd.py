import asyncio
import errno
import json
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nodes.blockdev import STATE_HOLE, STATE_ZERO, BlockDevice, Extent
from nodes.nbd import NbdServer
from tests.tools import require

HOST = "127.0.0.1"
MiB = 1 << 20
BLOCK = 4096
T = TypeVar("T")

# Spelled out from the protocol document rather than imported, so the tests check the wire.
NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x3E889045565A9
REQUEST_MAGIC, SIMPLE_MAGIC, STRUCTURED_MAGIC = 0x25609513, 0x67446698, 0x668E33EF
OPT_EXPORT_NAME, OPT_ABORT, OPT_GO = 1, 2, 7
OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 8, 10
REP_ACK, REP_INFO, REP_META_CONTEXT = 1, 3, 4
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = 2**31 + 1, 2**31 + 3, 2**31 + 6
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_BLOCK_STATUS = 0, 1, 2, 3, 7
FLAG_READ_ONLY, CMD_FLAG_REQ_ONE = 1 << 1, 1 << 3
REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR = 1, 5, 2**15 + 1
EPERM, EINVAL, ENOSPC = 1, 22, 28


def require_tool(name: str) -> str:
    """Return a qemu-utils tool's path; skip without it, but fail in CI."""
    return require(name, "Debian package qemu-utils")


class MemoryDevice:
    """A plain in-memory device to test the protocol; the real volumes are tested elsewhere.

    Allocation is tracked per 4 KiB block (a block never written, or trimmed whole, is a
    hole). Calls are recorded; `hold` parks operations at `hold_at` (any offset when None)
    until set; reads and writes at `fail_at` raise OSError(`fail_errno`).
    """

    def __init__(self, size: int, read_only: bool = False) -> None:
        self.data = bytearray(size)
        self.state = bytearray([STATE_HOLE | STATE_ZERO]) * (size // BLOCK)
        self._read_only = read_only
        self.calls: list[tuple[Any, ...]] = []
        self.hold: threading.Event | None = None
        self.hold_at: int | None = None
        self.entered = threading.Event()
        self.fail_at: int | None = None
        self.fail_errno = errno.EIO

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def read_only(self) -> bool:
        return self._read_only

    async def read(self, offset: int, length: int) -> bytes:
        await self._enter("read", offset, length)
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self._enter("write", offset, len(data), fua)
        self.data[offset : offset + len(data)] = data
        first, last = offset // BLOCK, -(-(offset + len(data)) // BLOCK)
        self.state[first:last] = bytes(last - first)

    async def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        await self._enter("write_zeroes", offset, length, may_trim)
        self._zero(offset, length, STATE_HOLE | STATE_ZERO if may_trim else STATE_ZERO)

    async def trim(self, offset: int, length: int) -> None:
        await self._enter("trim", offset, length)
        self._zero(offset, length, STATE_HOLE | STATE_ZERO)

    async def flush(self) -> None:
        self.calls.append(("flush",))

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        extents: list[Extent] = []
        position, end = offset, min(offset + length, self.size)
        while position < end:
            flags, stop = self.state[position // BLOCK], min((position // BLOCK + 1) * BLOCK, end)
            if extents and extents[-1].flags == flags:
                extents[-1] = Extent(extents[-1].length + stop - position, flags)
            else:
                extents.append(Extent(stop - position, flags))
            position = stop
        return extents

    async def _enter(self, op: str, offset: int, *details: Any) -> None:
        self.calls.append((op, offset, *details))
        if self.hold is not None and self.hold_at in (None, offset):
            self.entered.set()
            while not self.hold.is_set():
                await asyncio.sleep(0.005)
        if offset == self.fail_at:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))

    def _zero(self, offset: int, length: int, state: int) -> None:
        self.data[offset : offset + length] = bytes(length)
        first, last = -(-offset // BLOCK), (offset + length) // BLOCK
        if last > first:
            self.state[first:last] = bytes([state]) * (last - first)


class ServerThread:
    """An NbdServer on its own event loop in a background thread."""

    def __init__(self, exports: Any, **options: Any) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._main: asyncio.Task[Any] | None = None
        self.port = 0
        self._server: NbdServer | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(exports, options),), daemon=True
        )
        self._thread.start()
        assert self._ready.wait(10), "the NBD server did not start"

    async def _serve(self, exports: Any, options: dict[str, Any]) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._main = asyncio.current_task()
        self._server = NbdServer(exports, **options)
        try:
            _, self.port = await self._server.start()
        finally:
            self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self._server.close()

    @property
    def server(self) -> NbdServer:
        assert self._server is not None
        return self._server

    def url(self, name: str = "disk") -> str:
        return self.server.url(name)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return function(*args)

        return self.run(call())

    def wait_idle(self) -> None:
        """Wait until no task but the server's own is left (every connection is gone)."""

        async def others() -> int:
            mine = {asyncio.current_task(), self._main}
            return len([task for task in asyncio.all_tasks() if task not in mine])

        deadline = time.monotonic() + 10
        while (left := self.run(others())) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert left == 0, f"{left} tasks left on the server loop"

    def close(self) -> None:
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()


@dataclass(frozen=True)
class Qemu:
    """The real NBD clients from qemu-utils."""

    io_path: str
    img_path: str
    nbd_path: str

    def io_args(self, url: str, *commands: str) -> list[str]:
        return [self.io_path, "-f", "raw", url, *(a for c in commands for a in ("-c", c))]

    def io(self, url: str, *commands: str) -> subprocess.CompletedProcess[str]:
        args = self.io_args(url, *commands)
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)

    def img(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.img_path, *args], capture_output=True, text=True, timeout=60, check=False
        )


class RawClient:
    """An NBD client written byte by byte, to send what real clients never do."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5)

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def recv(self, length: int) -> bytes:
        data = b""
        while len(data) < length:
            piece = self.sock.recv(length - len(data))
            if not piece:
                raise EOFError(f"closed after {len(data)} of {length} bytes")
            data += piece
        return data

    def greet(self, client_flags: int = 3) -> None:
        magic, option_magic, _ = struct.unpack(">QQH", self.recv(18))
        assert (magic, option_magic) == (NBDMAGIC, IHAVEOPT)
        self.sock.sendall(struct.pack(">I", client_flags))

    def option(self, option: int, data: bytes = b"", magic: int = IHAVEOPT) -> None:
        self.sock.sendall(struct.pack(">QII", magic, option, len(data)) + data)

    def option_reply(self, option: int) -> tuple[int, bytes]:
        magic, answered, reply_type, length = struct.unpack(">QIII", self.recv(20))
        assert (magic, answered) == (REPLY_MAGIC, option)
        return reply_type, self.recv(length)

    def go(self, name: str = "disk", structured: bool = False, meta: bool = False) -> int:
        """Negotiate and enter transmission; return the transmission flags."""
        self.greet()
        if structured:
            self.option(OPT_STRUCTURED_REPLY)
            assert self.option_reply(OPT_STRUCTURED_REPLY)[0] == REP_ACK
        if meta:
            query = b"base:allocation"
            data = _string(name.encode()) + struct.pack(">I", 1) + _string(query)
            self.option(OPT_SET_META_CONTEXT, data)
            assert self.option_reply(OPT_SET_META_CONTEXT)[0] == REP_META_CONTEXT
            assert self.option_reply(OPT_SET_META_CONTEXT)[0] == REP_ACK
        self.option(OPT_GO, _string(name.encode()) + struct.pack(">H", 0))
        flags = 0
        while (reply := self.option_reply(OPT_GO))[0] == REP_INFO:
            if struct.unpack_from(">H", reply[1])[0] == 0:
                flags = struct.unpack_from(">H", reply[1], 10)[0]
        assert reply[0] == REP_ACK, reply
        return int(flags)

    def request(
        self, command: int, offset: int, length: int, handle: int = 1, flags: int = 0
    ) -> None:
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, handle, offset, length)
        self.sock.sendall(header)

    def simple_reply(self) -> tuple[int, int]:
        magic, error, handle = struct.unpack(">IIQ", self.recv(16))
        assert magic == SIMPLE_MAGIC
        return error, handle

    def chunk(self) -> tuple[int, int, int, bytes]:
        magic, flags, reply_type, handle, length = struct.unpack(">IHHQI", self.recv(20))
        assert magic == STRUCTURED_MAGIC
        return flags, reply_type, handle, self.recv(length)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def nbd_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "vmsnap.nbd" and r.levelno >= logging.WARNING
    ]


@pytest.fixture(scope="session")
def qemu() -> Qemu:
    return Qemu(require_tool("qemu-io"), require_tool("qemu-img"), require_tool("qemu-nbd"))


@pytest.fixture
def disk() -> MemoryDevice:
    return MemoryDevice(16 * MiB)


def start(exports: Mapping[str, BlockDevice] | Any, **options: Any) -> ServerThread:
    return ServerThread(exports, **options)


@pytest.fixture
def nbd(disk: MemoryDevice) -> Iterator[ServerThread]:
    server = start({"disk": disk})
    try:
        yield server
    finally:
        server.close()


# Real clients


def test_qemu_io_writes_a_pattern_and_reads_it_back(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice
) -> None:
    done = qemu.io(nbd.url(), "write -P 0xab 0 1M", "read -P 0xab 0 1M")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pattern verification failed" not in done.stdout
    assert disk.data[: 1 * MiB] == b"\xab" * MiB
    assert disk.data[1 * MiB :] == bytes(15 * MiB)


def test_qemu_io_notices_a_pattern_that_is_not_there(qemu: Qemu, nbd: ServerThread) -> None:
    done = qemu.io(nbd.url(), "write -P 0xab 0 64k", "read -P 0xcd 0 64k")
    assert done.returncode != 0
    assert "Pattern verification failed" in done.stdout


def test_qemu_img_info_reports_the_export_size(qemu: Qemu, nbd: ServerThread) -> None:
    done = qemu.img("info", "--output=json", nbd.url())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["virtual-size"] == 16 * MiB


def test_qemu_img_convert_reads_the_whole_export(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice, tmp_path: Path
) -> None:
    disk.data[: 6 * MiB] = os.urandom(6 * MiB)
    disk.state[: 6 * MiB // BLOCK] = bytes(6 * MiB // BLOCK)
    out = tmp_path / "out.raw"
    done = qemu.img("convert", "-f", "raw", "-O", "raw", nbd.url(), str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == bytes(disk.data)


def test_qemu_img_convert_writes_a_file_into_the_export(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice, tmp_path: Path
) -> None:
    disk.data[:] = b"\x77" * disk.size
    image = os.urandom(4 * MiB) + bytes(4 * MiB) + os.urandom(8 * MiB)
    source = tmp_path / "in.raw"
    source.write_bytes(image)
    done = qemu.img("convert", "-n", "-f", "raw", str(source), "-O", "raw", nbd.url())
    assert done.returncode == 0, done.stderr
    assert bytes(disk.data) == image
    assert ("flush",) in disk.calls


def test_discard_trims_and_the_range_reads_as_zeros(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice
) -> None:
    done = qemu.io(nbd.url(), "write -P 0x11 0 1M", "discard 0 1M", "read -P 0 0 1M")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("trim", 0, MiB) in disk.calls


def test_write_zeroes_keeps_space_allocated_unless_unmap_is_allowed(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice
) -> None:
    done = qemu.io(
        nbd.url(),
        "write -P 0x22 0 256k",
        "write -z 0 64k",
        "write -z -u 64k 64k",
        "read -P 0 0 128k",
        "read -P 0x22 128k 128k",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("write_zeroes", 0, 64 * 1024, False) in disk.calls
    assert ("write_zeroes", 64 * 1024, 64 * 1024, True) in disk.calls


def test_fua_and_flush_reach_the_device(qemu: Qemu, nbd: ServerThread, disk: MemoryDevice) -> None:
    done = qemu.io(nbd.url(), "write -f -P 0x33 0 4k", "flush")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("write", 0, 4096, True) in disk.calls
    assert ("flush",) in disk.calls


def test_qemu_img_map_shows_data_and_zero_extents(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice
) -> None:
    assert qemu.io(nbd.url(), "write -P 0x44 1M 1M").returncode == 0
    done = qemu.img("map", "--output=json", "-f", "raw", nbd.url())
    assert done.returncode == 0, done.stderr
    extents = [(e["start"], e["length"], e["data"], e["zero"]) for e in json.loads(done.stdout)]
    assert extents == [
        (0, MiB, False, True),
        (MiB, MiB, True, False),
        (2 * MiB, 14 * MiB, False, True),
    ]


def test_qemu_nbd_lists_the_exports_and_base_allocation(qemu: Qemu, disk: MemoryDevice) -> None:
    server = start({"disk": disk, "spare": MemoryDevice(MiB, read_only=True)})
    try:
        done = subprocess.run(
            [qemu.nbd_path, "--list", "-b", HOST, "-p", str(server.port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert "exports available: 2" in done.stdout
    assert "export: 'disk'" in done.stdout
    assert "export: 'spare'" in done.stdout
    assert "max block: 33554432" in done.stdout
    assert "base:allocation" in done.stdout


def test_concurrent_clients_on_distinct_ranges(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice
) -> None:
    processes = [
        subprocess.Popen(
            qemu.io_args(nbd.url(), f"write -P {i + 1} {i}M 1M", f"read -P {i + 1} {i}M 1M"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(6)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, outputs
    for i in range(6):
        assert disk.data[i * MiB : (i + 1) * MiB] == bytes([i + 1]) * MiB


def test_a_device_failure_answers_eio_and_the_connection_goes_on(
    qemu: Qemu, nbd: ServerThread, disk: MemoryDevice, caplog: pytest.LogCaptureFixture
) -> None:
    disk.fail_at = 0
    done = qemu.io(nbd.url(), "read 0 4k", "write -P 0x55 8k 4k", "read -P 0x55 8k 4k")
    assert "Input/output error" in done.stdout + done.stderr
    assert "read 4096/4096 bytes at offset 8192" in done.stdout
    assert "Pattern verification failed" not in done.stdout
    assert any("READ of 4096 bytes at 0" in message for message in nbd_warnings(caplog))


def test_a_client_killed_mid_transfer_leaves_the_server_serving(
    qemu: Qemu,
    nbd: ServerThread,
    disk: MemoryDevice,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    disk.state[:] = bytes(len(disk.state))  # all data, so qemu-img reads it all
    disk.hold = threading.Event()
    convert = subprocess.Popen(
        [qemu.img_path, "convert", "-f", "raw", "-O", "raw", nbd.url(), str(tmp_path / "o.raw")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert disk.entered.wait(30), "qemu-img never read"
    finally:
        convert.kill()
        convert.wait(timeout=30)
    disk.hold.set()
    nbd.wait_idle()
    done = qemu.io(nbd.url(), "write -P 0x66 0 64k", "read -P 0x66 0 64k")
    assert done.returncode == 0, done.stdout + done.stderr
    nbd.wait_idle()
    assert nbd_warnings(caplog) == []


def test_exports_come_and_go_while_the_server_runs(qemu: Qemu, nbd: ServerThread) -> None:
    other = MemoryDevice(MiB)
    nbd.call(nbd.server.add_export, "other", other)
    assert qemu.io(nbd.url("other"), "write -P 9 0 4k").returncode == 0
    assert other.data[:4096] == b"\x09" * 4096
    with RawClient(nbd.port) as client:
        client.go("other")
        nbd.call(nbd.server.remove_export, "other")
        assert client.closed_by_server()
    done = qemu.io(nbd.url("other"), "read 0 4k")
    assert done.returncode != 0
    assert "no export named 'other'" in done.stderr
    assert qemu.io(nbd.url(), "read 0 4k").returncode == 0


def test_a_lookup_function_finds_exports_by_name(qemu: Qemu) -> None:
    devices = {"vm-1/system": MemoryDevice(MiB)}
    server = start(devices.get)
    try:
        done = qemu.io(server.url("vm-1/system"), "write -P 7 0 4k", "read -P 7 0 4k")
        assert done.returncode == 0, done.stdout + done.stderr
        assert qemu.io(server.url("vm-2/system"), "read 0 4k").returncode != 0
    finally:
        server.close()
    assert devices["vm-1/system"].data[:4096] == b"\x07" * 4096


# Byte-level protocol


def test_an_unknown_option_is_unsupported_and_negotiation_goes_on(nbd: ServerThread) -> None:
    with RawClient(nbd.port) as client:
        client.greet()
        client.option(4242, b"whatever data")
        assert client.option_reply(4242)[0] == REP_ERR_UNSUP
        client.option(OPT_GO, _string(b"nope") + struct.pack(">H", 0))
        assert client.option_reply(OPT_GO)[0] == REP_ERR_UNKNOWN
        client.option(OPT_GO, _string(b"disk") + struct.pack(">H", 1))  # count says 1, none sent
        assert client.option_reply(OPT_GO)[0] == REP_ERR_INVALID
        client.option(OPT_GO, _string(b"disk") + struct.pack(">H", 0))
        assert client.option_reply(OPT_GO)[0] == REP_INFO


def test_meta_contexts_need_structured_replies_and_abort_is_acknowledged(
    nbd: ServerThread,
) -> None:
    query = _string(b"disk") + struct.pack(">I", 1) + _string(b"base:allocation")
    with RawClient(nbd.port) as client:
        client.greet()
        client.option(OPT_SET_META_CONTEXT, query)
        assert client.option_reply(OPT_SET_META_CONTEXT)[0] == REP_ERR_INVALID
        client.option(OPT_ABORT)
        assert client.option_reply(OPT_ABORT) == (REP_ACK, b"")
        assert client.closed_by_server()


def test_a_bad_option_magic_closes_that_connection_with_one_warning(
    nbd: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with RawClient(nbd.port) as client:
        client.greet()
        client.option(OPT_GO, b"", magic=0x1122334455667788)
        assert client.closed_by_server()
    assert len(nbd_warnings(caplog)) == 1
    assert "bad option magic" in nbd_warnings(caplog)[0]
    with RawClient(nbd.port) as client:
        client.go()


def test_unknown_client_flags_close_the_connection(
    nbd: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with RawClient(nbd.port) as client:
        client.greet(client_flags=0x80)
        assert client.closed_by_server()
    assert len(nbd_warnings(caplog)) == 1
    assert "unknown client flags" in nbd_warnings(caplog)[0]


def test_export_name_option_enters_transmission_without_zero_padding(
    nbd: ServerThread, disk: MemoryDevice
) -> None:
    disk.data[:4] = b"abcd"
    with RawClient(nbd.port) as client:
        client.greet()
        client.option(OPT_EXPORT_NAME, b"disk")
        size, _ = struct.unpack(">QH", client.recv(10))
        assert size == disk.size
        client.request(CMD_READ, 0, 4)
        assert client.simple_reply() == (0, 1)
        assert client.recv(4) == b"abcd"


def test_an_out_of_range_read_is_einval_and_the_connection_stays_usable(
    nbd: ServerThread, disk: MemoryDevice
) -> None:
    disk.data[:8] = b"12345678"
    with RawClient(nbd.port) as client:
        client.go()
        client.request(CMD_READ, disk.size - 512, 4096, handle=7)
        assert client.simple_reply() == (EINVAL, 7)
        client.request(CMD_READ, 0, 8, handle=8)
        assert client.simple_reply() == (0, 8)
        assert client.recv(8) == b"12345678"


def test_structured_replies_carry_errors_and_data_in_chunks(
    nbd: ServerThread, disk: MemoryDevice
) -> None:
    disk.data[:8] = b"abcdefgh"
    with RawClient(nbd.port) as client:
        client.go(structured=True)
        client.request(CMD_READ, disk.size, 1, handle=3)
        flags, reply_type, handle, payload = client.chunk()
        assert (flags, reply_type, handle) == (1, REPLY_TYPE_ERROR, 3)
        error, length = struct.unpack_from(">IH", payload)
        assert error == EINVAL
        assert payload[6 : 6 + length].startswith(b"READ of 1 bytes")
        client.request(CMD_READ, 0, 8, handle=4)
        assert client.chunk() == (1, REPLY_TYPE_OFFSET_DATA, 4, struct.pack(">Q", 0) + b"abcdefgh")


def test_writes_past_the_end_are_enospc_and_on_read_only_exports_eperm(
    disk: MemoryDevice,
) -> None:
    server = start({"disk": disk, "ro": MemoryDevice(MiB, read_only=True)})
    try:
        with RawClient(server.port) as client:
            client.go()
            client.request(CMD_WRITE, disk.size - 2, 4, handle=1)
            client.sock.sendall(b"wxyz")
            assert client.simple_reply() == (ENOSPC, 1)
        with RawClient(server.port) as client:
            assert client.go("ro") & FLAG_READ_ONLY
            client.request(CMD_WRITE, 0, 4, handle=2)
            client.sock.sendall(b"wxyz")
            assert client.simple_reply() == (EPERM, 2)
    finally:
        server.close()


def test_a_device_running_out_of_space_answers_enospc(
    nbd: ServerThread, disk: MemoryDevice
) -> None:
    disk.fail_at, disk.fail_errno = 0, errno.EDQUOT
    with RawClient(nbd.port) as client:
        client.go()
        client.request(CMD_WRITE, 0, 4, handle=5)
        client.sock.sendall(b"wxyz")
        assert client.simple_reply() == (ENOSPC, 5)


def test_oversized_requests_are_einval_and_an_unskippable_write_closes(
    nbd: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with RawClient(nbd.port) as client:
        client.go()
        client.request(CMD_READ, 0, 32 * MiB + 1, handle=1)
        assert client.simple_reply() == (EINVAL, 1)
        client.request(CMD_READ, 0, 0, handle=2)
        assert client.simple_reply() == (EINVAL, 2)
        assert nbd_warnings(caplog) == []
        client.request(CMD_WRITE, 0, 32 * MiB + 1, handle=3)
        assert client.closed_by_server()
    assert len(nbd_warnings(caplog)) == 1
    assert "write of 33554433 bytes" in nbd_warnings(caplog)[0]


def test_a_write_over_a_small_limit_is_skipped_and_refused(disk: MemoryDevice) -> None:
    server = start({"disk": disk}, max_request=MiB)
    try:
        with RawClient(server.port) as client:
            client.go()
            client.request(CMD_WRITE, 0, 2 * MiB, handle=1)
            client.sock.sendall(b"\xee" * 2 * MiB)
            assert client.simple_reply() == (EINVAL, 1)
            client.request(CMD_READ, 0, 4, handle=2)
            assert client.simple_reply() == (0, 2)
            assert client.recv(4) == bytes(4)
    finally:
        server.close()
    assert disk.calls == [("read", 0, 4)]


def test_a_bad_request_magic_closes_that_connection_with_one_warning(
    nbd: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with RawClient(nbd.port) as client:
        client.go()
        client.sock.sendall(b"\x00" * 28)
        assert client.closed_by_server()
    assert len(nbd_warnings(caplog)) == 1
    assert "bad request magic" in nbd_warnings(caplog)[0]
    with RawClient(nbd.port) as client:
        client.go()


def test_block_status_needs_a_context_and_honours_req_one(
    nbd: ServerThread, disk: MemoryDevice
) -> None:
    disk.state[1] = 0
    with RawClient(nbd.port) as client:
        client.go(structured=True)
        client.request(CMD_BLOCK_STATUS, 0, MiB, handle=1)
        assert client.chunk()[1] == REPLY_TYPE_ERROR
    with RawClient(nbd.port) as client:
        client.go(structured=True, meta=True)
        client.request(CMD_BLOCK_STATUS, 0, 3 * BLOCK, handle=2)
        flags, reply_type, handle, payload = client.chunk()
        assert (flags, reply_type, handle) == (1, REPLY_TYPE_BLOCK_STATUS, 2)
        hole = STATE_HOLE | STATE_ZERO
        assert payload == struct.pack(">IIIIIII", 1, BLOCK, hole, BLOCK, 0, BLOCK, hole)
        client.request(CMD_BLOCK_STATUS, 0, 3 * BLOCK, handle=3, flags=CMD_FLAG_REQ_ONE)
        assert client.chunk()[3] == struct.pack(">III", 1, BLOCK, hole)


def test_requests_run_concurrently_and_replies_come_out_of_order(
    nbd: ServerThread, disk: MemoryDevice
) -> None:
    disk.hold, disk.hold_at = threading.Event(), 0
    with RawClient(nbd.port) as client:
        client.go()
        client.request(CMD_READ, 0, 4, handle=1)
        assert disk.entered.wait(10)
        client.request(CMD_READ, BLOCK, 4, handle=2)
        assert client.simple_reply() == (0, 2)
        client.recv(4)
        disk.hold.set()
        assert client.simple_reply() == (0, 1)


def test_a_flush_waits_for_the_writes_received_before_it(
    nbd: ServerThread, disk: MemoryDevice
) -> None:
    disk.hold, disk.hold_at = threading.Event(), 0
    with RawClient(nbd.port) as client:
        client.go()
        client.request(CMD_WRITE, 0, 4, handle=1)
        client.sock.sendall(b"data")
        assert disk.entered.wait(10)
        client.request(CMD_FLUSH, 0, 0, handle=2)
        time.sleep(0.2)
        assert ("flush",) not in disk.calls
        disk.hold.set()
        assert {client.simple_reply(), client.simple_reply()} == {(0, 1), (0, 2)}
    assert disk.calls == [("write", 0, 4, False), ("flush",)]


def test_a_client_gone_mid_request_leaves_no_task_behind(
    nbd: ServerThread, disk: MemoryDevice, caplog: pytest.LogCaptureFixture
) -> None:
    with RawClient(nbd.port) as client:
        client.go()
        client.request(CMD_WRITE, 0, MiB, handle=1)
        client.sock.sendall(b"x" * 1000)
    with RawClient(nbd.port) as client:
        client.greet()
    nbd.wait_idle()
    assert disk.calls == []
    assert nbd_warnings(caplog) == []
    with RawClient(nbd.port) as client:
        client.go()
        client.request(CMD_DISC, 0, 0)
        assert client.closed_by_server()


def test_closing_the_server_answers_requests_in_flight_then_disconnects(
    disk: MemoryDevice,
) -> None:
    server = start({"disk": disk})
    disk.hold = threading.Event()
    closing = threading.Thread(target=server.close)
    try:
        with RawClient(server.port) as busy, RawClient(server.port) as idle:
            busy.go()
            idle.go()
            busy.request(CMD_READ, 0, 4, handle=1)
            assert disk.entered.wait(10)
            closing.start()
            assert idle.closed_by_server()
            disk.hold.set()
            assert busy.simple_reply() == (0, 1)
            assert busy.recv(4) == bytes(4)
            assert busy.closed_by_server()
    finally:
        disk.hold.set()
        if closing.ident is None:
            closing.start()
        closing.join(30)
    assert not closing.is_alive()
