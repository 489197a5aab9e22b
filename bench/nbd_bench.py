"""NBD benchmark: vmsnap's NBD server against qemu-nbd, each serving an equal raw file.

Prints, each figure the median of several runs, for both servers and their ratio
(vmsnap / qemu-nbd):
- sequential write MB/s: ``qemu-img convert -n`` of a random-data file into the
  export, including the flush qemu-img sends at the end;
- sequential read MB/s: ``qemu-img convert`` of the export into a null target;
- random 4 KiB writes, one at a time from a small NBD client in this script:
  IOPS, and p50 / p99 latency.

vmsnap serves from its own process, as qemu-nbd does, so no client shares its
interpreter. Its device is a plain raw file (pread/pwrite, fdatasync on flush), or
a business volume with ``--device volume``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nodes.blockdev import Extent
from nodes.nbd import NbdServer

HOST = "127.0.0.1"
EXPORT = "bench"
MiB = 1 << 20
INLINE_IO = 64 * 1024


class FileDevice:
    """A raw file as a block device: small I/O inline, large I/O and fdatasync in threads."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def read_only(self) -> bool:
        return False

    async def read(self, offset: int, length: int) -> bytes:
        return await self._io(length, os.pread, self._fd, length, offset)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self._io(len(data), os.pwrite, self._fd, data, offset)
        if fua:
            await self.flush()

    async def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        for start in range(offset, offset + length, 4 * MiB):
            size = min(4 * MiB, offset + length - start)
            await self._io(size, os.pwrite, self._fd, bytes(size), start)

    async def trim(self, offset: int, length: int) -> None:
        return None  # a hint the protocol lets a server ignore

    async def flush(self) -> None:
        await asyncio.to_thread(os.fdatasync, self._fd)

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        return [Extent(length, 0)]

    def close(self) -> None:
        os.close(self._fd)

    async def _io(self, size: int, call: Callable[..., Any], *args: Any) -> Any:
        if size <= INLINE_IO:
            return call(*args)
        return await asyncio.to_thread(call, *args)


def open_device(kind: str, path: Path) -> Any:
    """Return the device to serve: the raw file itself, or a volume beside it."""
    if kind == "file":
        return FileDevice(path)
    from nodes.volume import Volume

    return Volume.create(path.with_suffix(".volume"), path.stat().st_size)


async def serve(path: Path, kind: str) -> None:
    """Serve `path` until SIGTERM, printing the port first."""
    device = open_device(kind, path)
    server = NbdServer({EXPORT: device})
    _, port = await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close()
    device.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int) -> None:
    """Wait until an NBD server answers on `port` (greeting, then NBD_OPT_ABORT)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            TinyClient(port, go=False).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"no NBD server answers on port {port}")


@contextmanager
def vmsnap_server(path: Path, kind: str) -> Iterator[int]:
    args = [sys.executable, __file__, "--serve", str(path), "--device", kind]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=60)


@contextmanager
def qemu_nbd_server(path: Path) -> Iterator[int]:
    port = free_port()
    args = ["qemu-nbd", "-f", "raw", "--persistent", "-p", str(port), "-b", HOST, "-x", EXPORT]
    process = subprocess.Popen([*args, str(path)])
    try:
        wait_listening(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=60)


def timed(args: list[str]) -> float:
    """Run a command and return its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def sequential_write(port: int, source: Path, size: int) -> float:
    url = f"nbd://{HOST}:{port}/{EXPORT}"
    return (
        size
        / MiB
        / timed(["qemu-img", "convert", "-n", "-f", "raw", str(source), "-O", "raw", url])
    )


def sequential_read(port: int, size: int) -> float:
    url = f"nbd://{HOST}:{port}/{EXPORT}"
    target = f"driver=null-co,size={size}"
    args = ["qemu-img", "convert", "-n", "-f", "raw", url, "--target-image-opts", target]
    return size / MiB / timed(args)


class TinyClient:
    """Just enough NBD to send writes one at a time: NBD_OPT_GO, simple replies."""

    def __init__(self, port: int, go: bool = True, export: str = EXPORT) -> None:
        self.export = export
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._recv(18)
        self.sock.sendall(struct.pack(">I", 3))
        self._in_transmission = go
        if go:
            self._go()

    def _go(self) -> None:
        name = self.export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
        while True:
            _, _, reply_type, length = struct.unpack(">QIII", self._recv(20))
            self._recv(length)
            if reply_type == 1:
                break
            if reply_type != 3:
                raise RuntimeError(f"NBD_OPT_GO failed: reply {reply_type:#x}")

    def write(self, offset: int, data: bytes, handle: int) -> None:
        header = struct.pack(">IHHQQI", 0x25609513, 0, 1, handle, offset, len(data))
        self.sock.sendall(header + data)
        magic, error, answered = struct.unpack(">IIQ", self._recv(16))
        if (magic, error, answered) != (0x67446698, 0, handle):
            raise RuntimeError(f"write failed: error {error}")

    def read(self, offset: int, length: int, handle: int) -> bytes:
        """One NBD_CMD_READ (simple reply)."""
        self.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, handle, offset, length))
        magic, error, answered = struct.unpack(">IIQ", self._recv(16))
        if (magic, error, answered) != (0x67446698, 0, handle):
            raise RuntimeError(f"read failed: error {error}")
        return self._recv(length)

    def close(self) -> None:
        """Leave politely: NBD_CMD_DISC in transmission, NBD_OPT_ABORT before it."""
        if self._in_transmission:
            self.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 0, 0, 0))
        else:
            self.sock.sendall(struct.pack(">QII", 0x49484156454F5054, 2, 0))
            self._recv(20)
        self.sock.close()

    def _recv(self, length: int) -> bytes:
        data = b""
        while len(data) < length:
            piece = self.sock.recv(length - len(data))
            if not piece:
                raise EOFError("server closed the connection")
            data += piece
        return data


def random_writes(port: int, size: int, count: int) -> tuple[float, float, float]:
    """Return IOPS, p50 and p99 latency in µs of `count` random 4 KiB writes."""
    client = TinyClient(port)
    rng = random.Random(port)
    block = os.urandom(4096)
    latencies = []
    try:
        for handle in range(count):
            offset = rng.randrange(size // 4096) * 4096
            started = time.perf_counter_ns()
            client.write(offset, block, handle)
            latencies.append((time.perf_counter_ns() - started) / 1000)
    finally:
        client.close()
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    return 1e6 * count / sum(latencies), p50, p99


def measure(port: int, source: Path, size: int, runs: int, count: int) -> dict[str, float]:
    """Return the median of `runs` runs of every figure against one server."""
    writes = [sequential_write(port, source, size) for _ in range(runs)]
    reads = [sequential_read(port, size) for _ in range(runs)]
    randoms = [random_writes(port, size, count) for _ in range(runs)]
    return {
        "sequential write MB/s": statistics.median(writes),
        "sequential read MB/s": statistics.median(reads),
        "random 4K write IOPS": statistics.median(r[0] for r in randoms),
        "random 4K write p50 µs": statistics.median(r[1] for r in randoms),
        "random 4K write p99 µs": statistics.median(r[2] for r in randoms),
    }


def make_source(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for start in range(0, size, 64 * MiB):
            out.write(os.urandom(min(64 * MiB, size - start)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="export size")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--random-writes", type=int, default=2000, help="4 KiB writes per run")
    parser.add_argument("--device", choices=("file", "volume"), default="file")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve(options.serve, options.device))
        return
    size = options.size_mib * MiB
    with tempfile.TemporaryDirectory(dir=options.dir) as tmp:
        folder = Path(tmp)
        source = folder / "source.raw"
        make_source(source, size)
        results = {}
        for name in ("vmsnap", "qemu-nbd"):
            served = folder / f"{name}.raw"
            with served.open("wb") as out:
                out.truncate(size)
            server = (
                vmsnap_server(served, options.device)
                if name == "vmsnap"
                else qemu_nbd_server(served)
            )
            with server as port:
                results[name] = measure(port, source, size, options.runs, options.random_writes)
    print(
        f"\nNBD, {options.size_mib} MiB export, median of {options.runs} runs, "
        f"vmsnap device: {options.device}"
    )
    print(f"{'':26}{'vmsnap':>12}{'qemu-nbd':>12}{'ratio':>8}")
    for figure, ours in results["vmsnap"].items():
        theirs = results["qemu-nbd"][figure]
        print(f"{figure:26}{ours:12.1f}{theirs:12.1f}{ours / theirs:8.2f}")


if __name__ == "__main__":
    main()
