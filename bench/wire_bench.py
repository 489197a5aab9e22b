"""Node protocol benchmark: bulk frames between two processes on loopback.

Prints, in one run, MB/s and CPU-seconds per GB (sender and receiver processes apart) of:
- ``put``: requests carrying 16 chunks of 64 KiB (about 1 MiB, as ``chunk.put_many``),
  answered with a small map;
- ``get``: small requests answered with 16 chunks of 64 KiB (as ``chunk.get_many`` and
  ``volume.read_chunks``);
both through ``NodeClient`` and ``NodeServer`` with ``--depth`` calls in flight, and the
reference: the same bytes sent with a plain blocking ``sendall`` and read with ``recv_into``
into one reused buffer (no framing, no event loop), the ceiling of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.client import NodeClient  # noqa: E402
from nodes.server import NodeServer  # noqa: E402

CHUNK = 64 * 1024
CHUNKS = 16
FRAME_BYTES = CHUNK * CHUNKS
GB = 1e9


def chunks() -> list[bytes]:
    """Sixteen distinct chunks of random bytes."""
    return [os.urandom(CHUNK) for _ in range(CHUNKS)]


async def serve(secret: bytes) -> None:
    """Run a node server with the benchmark's operations; print its port, stop at stdin EOF."""
    blobs = chunks()

    async def put(args: dict[str, Any]) -> dict[str, Any]:
        return {"stored": len(args["items"])}

    async def get(args: dict[str, Any]) -> dict[str, Any]:
        return {"blobs": blobs}

    async def cpu(args: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": time.process_time()}

    server = NodeServer("bench", secret, {"put": put, "get": get, "cpu": cpu}, timeout=60)
    _host, port = await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.close()


async def drive(port: int, secret: bytes, op: str, frames: int, depth: int) -> tuple[float, ...]:
    """Send ``frames`` calls of ``op``; return wall seconds, client and server CPU seconds."""
    items = [[secrets.token_bytes(32), blob] for blob in chunks()]
    args = {"items": items} if op == "put" else {"ids": [item[0] for item in items]}
    async with NodeClient("127.0.0.1", port, secret, timeout=60) as client:
        server_start = (await client.call("cpu"))["seconds"]
        start, cpu_start = time.perf_counter(), time.process_time()
        left = frames

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.call(op, args)

        await asyncio.gather(*(worker() for _ in range(depth)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        server_cpu = (await client.call("cpu"))["seconds"] - server_start
    return wall, cpu, server_cpu


def plain_receiver(port_out: socket.socket, total: int) -> None:
    """Accept one connection and read ``total`` bytes into one reused buffer."""
    buffer = memoryview(bytearray(FRAME_BYTES))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port_out.sendall(listener.getsockname()[1].to_bytes(4, "big"))
        conn, _ = listener.accept()
        with conn:
            start = time.process_time()
            while total > 0:
                got = conn.recv_into(buffer[: min(total, FRAME_BYTES)])
                if not got:
                    break
                total -= got
            conn.sendall(int((time.process_time() - start) * 1e6).to_bytes(8, "big"))


def plain(frames: int) -> tuple[float, float, float]:
    """Reference: wall, sender and receiver CPU seconds of ``frames`` frames' bytes, unframed."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        plain_receiver(child, frames * FRAME_BYTES)
        os._exit(0)
    child.close()
    port = int.from_bytes(parent.recv(4), "big")
    data = b"".join(chunks())
    with socket.create_connection(("127.0.0.1", port)) as conn:
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(frames):
            conn.sendall(data)
        reply = b""
        while len(reply) < 8:
            reply += conn.recv(8 - len(reply))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    os.waitpid(pid, 0)
    return wall, cpu, int.from_bytes(reply, "big") / 1e6


def report(name: str, frames: int, wall: float, sender: float, receiver: float) -> None:
    """Print one line of figures."""
    gb = frames * FRAME_BYTES / GB
    print(
        f"{name:<24} {gb / wall * 1000:8.0f} MB/s   CPU s/GB: sender {sender / gb:5.2f}"
        f"  receiver {receiver / gb:5.2f}  total {(sender + receiver) / gb:5.2f}"
    )


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per measurement")
    parser.add_argument("--depth", type=int, default=4, help="calls in flight")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median shown")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve(bytes.fromhex(sys.stdin.readline().strip())))
        return
    secret = secrets.token_bytes(32)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(secret.hex() + "\n")
    server.stdin.flush()
    port = int(server.stdout.readline())
    print(f"{options.frames} frames of {CHUNKS} x {CHUNK // 1024} KiB, {options.depth} in flight")
    try:
        for op in ("put", "get"):
            runs = sorted(
                (asyncio.run(drive(port, secret, op, options.frames, options.depth)))
                for _ in range(options.runs)
            )
            wall, client, node = runs[len(runs) // 2]
            sender, receiver = (client, node) if op == "put" else (node, client)
            report(f"{op} (node protocol)", options.frames, wall, sender, receiver)
    finally:
        server.stdin.close()
        server.wait()
    runs = sorted(plain(options.frames) for _ in range(options.runs))
    report("plain sockets (ceiling)", options.frames, *runs[len(runs) // 2])


if __name__ == "__main__":
    main()
