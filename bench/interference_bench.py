"""What slows a VM's NBD writes on a shared machine: CPU, loopback traffic, or disk syncs.

Measures the p99 of random 4 KiB NBD writes to a business-node volume (one every 2 ms, as in
bench/snapshot_bench.py) with the node idle, then while other processes run on the same
machine, none of them vmsnap's:
- CPU-bound loops (nice 0, as many as cores);
- a loopback TCP stream (nice 19), as the transfer and backup nodes make;
- writers that append 1 MiB blocks and fsync every 4 (nice 10), as backup nodes do.
The reference for each is the idle p99 measured in the same run, just before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot_bench import latencies, nbd_port, p99, vmsnap

MiB = 1 << 20
CPU = "while True: pass"
NET = """
import os, socket, threading
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
def sink():
    peer, _ = server.accept()
    while peer.recv(1 << 20): pass
threading.Thread(target=sink, daemon=True).start()
out = socket.create_connection(server.getsockname())
block = os.urandom(1 << 20)
while True: out.sendall(block)
"""
DISK = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
block, n = os.urandom(1 << 20), 0
while True:
    os.write(fd, block); n += 1
    if n % 4 == 0: os.fsync(fd)
    if n % 512 == 0: os.ftruncate(fd, 0)
"""


def loads(kind: str, work: Path) -> list[subprocess.Popen[bytes]]:
    if kind == "cpu":
        return [
            subprocess.Popen(["nice", "-n", "0", sys.executable, "-c", CPU])
            for _ in range(os.cpu_count() or 2)
        ]
    if kind == "net":
        return [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", NET])]
    return [
        subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", DISK, str(work / f"w{i}")])
        for i in range(2)
    ]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="vmsnap-interference-"))
    folder = work / "deployment"
    cli = [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml")]
    subprocess.run(
        [sys.executable, "-m", "cli", "init", "--dir", str(folder)], check=True, capture_output=True
    )
    subprocess.run([*cli, "up"], check=True, capture_output=True)
    try:
        vmsnap(folder, "vm", "register", "probe", "--ip", "10.0.0.2", "--disk", "system:root:256M")
        port = nbd_port(vmsnap(folder, "disk", "url", "probe", "root")["url"])
        print(f"{'load':40} {'idle p99 (us)':>14} {'loaded p99 (us)':>16} {'ratio':>7}")
        for kind, label in (
            ("cpu", "CPU loops, nice 0, one per core"),
            ("net", "loopback TCP stream, nice 19"),
            ("disk", "2 writers with fsync, nice 10"),
        ):
            idle = p99(latencies(port, "probe/root", 256 * MiB, 1500, None))
            hogs = loads(kind, work)
            try:
                time.sleep(0.5)
                loaded = p99(latencies(port, "probe/root", 256 * MiB, 1500, None))
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            print(f"{label:40} {idle:14.0f} {loaded:16.0f} {loaded / idle:7.2f}")
    finally:
        subprocess.run([*cli, "down"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
