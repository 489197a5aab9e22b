"""Fast rollback benchmark: seconds until the VM reads again, mirror latency, finish, normal.

On `vmsnap up`'s default network, for a generated 2 GiB disk (1 MiB extents: 40% zero, 30%
text-like, 30% random) and a sparse 50 GiB disk (64 MiB written in scattered 1 MiB
extents), in one run:
- the seconds from `vmsnap rollback start --fast` (the command, as an operator runs it) to
  the first successful 4 KiB read by the VM (an NBD client on the disk's export);
- 4 KiB random read latency from the mirror while the background restore runs, against
  the same reads from the business volume when no rollback runs (the reference);
- the seconds `vmsnap rollback finish` takes and the total from start to finished;
- the reference: a normal rollback of the same case (the VM can read only when it ends).

1% of the 4 KiB blocks are rewritten after the snapshot, so both rollbacks have work to do.
Timings are medians where repeated; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbd_bench import TinyClient
from snapshot_bench import make_image, nbd_port, rewrites, vmsnap

MiB, GiB = 1 << 20, 1 << 30
BLOCK = 4096


def first_read(folder: Path, vm: str, snapshot: str, port: int, export: str) -> float:
    """Seconds from launching `rollback start --fast` to the VM's first successful read."""
    started = time.perf_counter()
    vmsnap(folder, "rollback", "start", vm, snapshot, "--fast")
    client = TinyClient(port, export=export)
    try:
        client.read(0, BLOCK, 1)
    finally:
        client.close()
    return time.perf_counter() - started


def read_latencies(port: int, export: str, size: int, count: int) -> list[float]:
    """Microseconds of `count` random 4 KiB reads."""
    rng = random.Random(size)
    client = TinyClient(port, export=export)
    found = []
    try:
        for handle in range(count):
            offset = rng.randrange(size // BLOCK) * BLOCK
            began = time.perf_counter_ns()
            client.read(offset, BLOCK, handle)
            found.append((time.perf_counter_ns() - began) / 1000)
    finally:
        client.close()
    return found


def rewrite(port: int, export: str, size: int, seed: int) -> None:
    client = TinyClient(port, export=export)
    try:
        for handle, (offset, data) in enumerate(rewrites(size, 0.01, seed)):
            client.write(offset, data, handle)
    finally:
        client.close()


def case(folder: Path, vm: str, size: int, image: Path | None, reads: int) -> dict[str, float]:
    vmsnap(folder, "vm", "register", vm, "--ip", "10.0.0.1", "--disk", f"system:root:{size}")
    url = vmsnap(folder, "disk", "url", vm, "root")["url"]
    port, export = nbd_port(url), f"{vm}/root"
    if image is not None:
        subprocess.run(
            ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), url], check=True
        )
    else:
        client = TinyClient(port, export=export)
        rng = random.Random(7)
        for handle, extent in enumerate(rng.sample(range(size // MiB), 64)):
            client.write(extent * MiB, rng.randbytes(MiB), handle)
        client.close()
    snap = vmsnap(folder, "snapshot", "create", vm)["id"]
    touched = min(size, 2 * GiB)
    idle = read_latencies(port, export, touched, reads)
    rewrite(port, export, touched, 1)
    to_read = first_read(folder, vm, snap, port, export)
    during = read_latencies(port, export, touched, reads)
    began = time.perf_counter()
    vmsnap(folder, "rollback", "finish", vm)
    finish = time.perf_counter() - began
    status = vmsnap(folder, "rollback", "status", vm)
    total = (status["finished_at_ms"] - status["started_at_ms"]) / 1000
    rewrite(port, export, touched, 2)
    began = time.perf_counter()
    vmsnap(folder, "rollback", "start", vm, snap)
    normal = time.perf_counter() - began
    return {
        "first_read_s": to_read,
        "mirror_p50_us": statistics.median(during),
        "mirror_p99_us": sorted(during)[int(len(during) * 0.99)],
        "volume_p50_us": statistics.median(idle),
        "volume_p99_us": sorted(idle)[int(len(idle) * 0.99)],
        "finish_s": finish,
        "total_s": total,
        "normal_s": normal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--sparse-gib", type=int, default=50)
    parser.add_argument("--reads", type=int, default=400)
    args = parser.parse_args()
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is needed (Debian package qemu-utils)")
    work = Path(tempfile.mkdtemp(prefix="vmsnap-fastbench-"))
    folder = work / "deployment"
    subprocess.run(
        [sys.executable, "-m", "cli", "init", "--dir", str(folder)], check=True, capture_output=True
    )
    subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), "up"],
        check=True,
        capture_output=True,
    )
    results = {}
    try:
        image = work / "disk.raw"
        make_image(image, args.size_mib * MiB)
        results[f"{args.size_mib} MiB"] = case(
            folder, "dense", args.size_mib * MiB, image, args.reads
        )
        image.unlink()
        results[f"{args.sparse_gib} GiB sparse"] = case(
            folder, "sparse", args.sparse_gib * GiB, None, args.reads
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), "down"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        ("rollback start --fast to first VM read (s)", "first_read_s", "< 1"),
        ("4K read from the mirror p50 (us)", "mirror_p50_us", ""),
        ("4K read from the mirror p99 (us)", "mirror_p99_us", ""),
        ("4K read from the volume p50, reference (us)", "volume_p50_us", ""),
        ("4K read from the volume p99, reference (us)", "volume_p99_us", ""),
        ("rollback finish (s)", "finish_s", ""),
        ("fast rollback start to finished (s)", "total_s", ""),
        ("normal rollback, VM reads only after (s)", "normal_s", ""),
    ]
    names = list(results)
    print(f"{'figure':46}" + "".join(f"{n:>18}" for n in names) + f"{'goal':>8}")
    for label, key, goal in rows:
        print(f"{label:46}" + "".join(f"{results[n][key]:18.3f}" for n in names) + f"{goal:>8}")


if __name__ == "__main__":
    main()
