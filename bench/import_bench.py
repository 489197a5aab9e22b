"""Disk import benchmark: `vmsnap disk import` of a raw image against `qemu-img convert`.

On `vmsnap up`'s default network and a generated image (1 MiB extents: 40% zero, 30%
text-like, 30% random), in one run: the seconds `vmsnap disk import` takes to load the
image into a VM disk, and, as the reference, the seconds `qemu-img convert -n` takes to
write the same image into another VM disk's NBD export. Rounds alternate; medians print.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot_bench import MiB, make_image, vmsnap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is needed (Debian package qemu-utils)")
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="vmsnap-importbench-"))
    folder = work / "deployment"
    config = ["--config", str(folder / "vmsnap.toml")]
    ours: list[float] = []
    theirs: list[float] = []
    try:
        image = work / "disk.raw"
        make_image(image, size)
        subprocess.run(
            [sys.executable, "-m", "cli", "init", "--dir", str(folder)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [sys.executable, "-m", "cli", *config, "up"], check=True, capture_output=True
        )
        for vm in ("imported", "converted"):
            vmsnap(
                folder, "vm", "register", vm, "--ip", "10.0.0.1", "--disk", f"system:root:{size}"
            )
        url = vmsnap(folder, "disk", "url", "converted", "root")["url"]
        for _round in range(args.rounds):
            started = time.perf_counter()
            vmsnap(folder, "disk", "import", "imported", "root", str(image))
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run(
                ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), url],
                check=True,
            )
            theirs.append(time.perf_counter() - started)
    finally:
        subprocess.run([sys.executable, "-m", "cli", *config, "down"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    mine, ref = statistics.median(ours), statistics.median(theirs)
    print(f"raw image {args.size_mib} MiB (40% zero, 30% text, 30% random), {args.rounds} rounds")
    print(f"{'figure':40} {'vmsnap':>10} {'qemu-img':>10} {'ratio':>7}")
    print(f"{'import, median (s)':40} {mine:10.2f} {ref:10.2f} {mine / ref:7.2f}")
    print("rounds (s): vmsnap " + " ".join(f"{s:.2f}" for s in ours))
    print("rounds (s): qemu-img convert " + " ".join(f"{s:.2f}" for s in theirs))


if __name__ == "__main__":
    main()
