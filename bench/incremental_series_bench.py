"""Successive incremental snapshots: what each one reads, stores and takes, against restic.

A VM snapshotted on a schedule takes one incremental after another. On a generated disk
(as `snapshot_bench.py`: 1 MiB extents, 40% zero, 30% text-like, 30% random), in one run:
a full snapshot, then `--rounds` rounds of "1% of the 4 KiB blocks rewritten at random (a
new draw each round), then an incremental snapshot". For each round it prints vmsnap's
seconds, bytes read from the disk and stored bytes (one copy; the cluster keeps R=2), and,
as the reference, `restic backup` of the same image after the same rewrites: seconds and
repository growth. A chunk rewritten in several rounds is where the two differ most, so
the last rounds matter as much as the first.

Then one more round after the newest snapshot is deleted from both (`snapshot delete`,
`restic forget`): the next snapshot's parent is the one before, and it should still read
only what changed since that one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbd_bench import TinyClient
from snapshot_bench import MiB, du, make_image, nbd_port, rewrites, stored, vmsnap


class Restic:
    """A restic repository of the image, in the same work folder."""

    def __init__(self, work: Path) -> None:
        self.repo, self.cache = work / "restic", work / "restic-cache"
        self.env = {**os.environ, "RESTIC_PASSWORD": "bench"}
        self.run("init")

    def run(self, *args: str) -> float:
        """Seconds one restic command took."""
        started = time.perf_counter()
        self.output(*args)
        return time.perf_counter() - started

    def output(self, *args: str) -> str:
        """What one restic command printed; a failure ends the benchmark with its error."""
        command = ["restic", "--cache-dir", str(self.cache), "--repo", str(self.repo), *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"restic {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def forget_latest(self) -> None:
        """Forget the newest snapshot (its data stays until a prune)."""
        self.run("forget", json.loads(self.output("snapshots", "--json"))[-1]["id"])

    def backup(self, image: Path) -> tuple[float, int]:
        """Seconds of one backup, and the repository's growth in bytes."""
        before = du(self.repo)
        seconds = self.run("backup", str(image))
        return seconds, du(self.repo) - before


def rewrite(image: Path, url: str, changes: list[tuple[int, bytes]]) -> None:
    """The same blocks written through the VM's NBD export and into restic's image."""
    client = TinyClient(nbd_port(url), export="bench/root")
    for handle, (offset, data) in enumerate(changes):
        client.write(offset, data, handle)
    client.close()
    with image.open("r+b") as out:
        for offset, data in changes:
            out.seek(offset)
            out.write(data)


def run(work: Path, size: int, rounds: int, fraction: float) -> list[dict[str, Any]]:
    image = work / "disk.raw"
    make_image(image, size)
    folder = work / "deployment"
    cli = [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml")]
    init = [sys.executable, "-m", "cli", "init", "--dir", str(folder)]
    subprocess.run(init, check=True, capture_output=True)
    subprocess.run([*cli, "up"], check=True, capture_output=True)
    try:
        disk = f"system:root:{size}"
        vmsnap(folder, "vm", "register", "bench", "--ip", "10.0.0.1", "--disk", disk)
        url = vmsnap(folder, "disk", "url", "bench", "root")["url"]
        convert = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), url]
        subprocess.run(convert, check=True)
        vmsnap(folder, "snapshot", "create", "bench")
        restic = Restic(work)
        restic.backup(image)
        rows = []
        newest = ""
        for number in range(1, rounds + 2):
            if number > rounds:
                vmsnap(folder, "snapshot", "delete", newest, "--no-gc")
                restic.forget_latest()
            rewrite(image, url, rewrites(size, fraction, seed=100 + number))
            time.sleep(0.5)
            started = time.perf_counter()
            snap = vmsnap(folder, "snapshot", "create", "bench")
            seconds = time.perf_counter() - started
            restic_s, restic_growth = restic.backup(image)
            (detail,) = snap["disk_details"]
            newest = snap["id"]
            rows.append(
                {
                    "round": str(number) if number <= rounds else "del",
                    "s": seconds,
                    "read": int(detail["bytes_read"]),
                    "stored": stored(snap),
                    "restic_s": restic_s,
                    "restic_growth": restic_growth,
                }
            )
            print(_line(rows[-1]), flush=True)
        return rows
    finally:
        subprocess.run([*cli, "down"], capture_output=True, check=False)


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['round']:>5} {row['s']:9.2f} {row['read'] / MiB:9.1f} {row['stored'] / MiB:10.1f}"
        f" {row['restic_s']:9.2f} {row['restic_growth'] / MiB:10.1f}"
        f" {row['s'] / row['restic_s']:7.3f} {row['stored'] / row['restic_growth']:7.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args()
    if shutil.which("restic") is None or shutil.which("qemu-img") is None:
        raise SystemExit("restic and qemu-img are needed (Debian packages restic, qemu-utils)")
    print(
        f"disk {args.size_mib} MiB; {args.rounds} rounds of {args.fraction:.0%} of 4 KiB blocks"
        " rewritten, then an incremental snapshot; vmsnap R=2 (stored: one copy), restic 1 copy"
    )
    print(
        f"{'round':>5} {'vmsnap s':>9} {'read MiB':>9} {'stored MiB':>10}"
        f" {'restic s':>9} {'grown MiB':>10} {'s ratio':>7} {'stored':>7}"
    )
    work = Path(tempfile.mkdtemp(prefix="vmsnap-seriesbench-"))
    try:
        rows = run(work, args.size_mib * MiB, args.rounds, args.fraction)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    *series, deleted = rows
    first, last = series[0], series[-1]
    print(
        f"stored, last round / first: {last['stored'] / first['stored']:.2f}x;"
        f" read, last / first: {last['read'] / first['read']:.2f}x"
    )
    print(
        "median time ratio to restic:"
        f" {statistics.median(r['s'] / r['restic_s'] for r in series):.3f};"
        " median stored ratio:"
        f" {statistics.median(r['stored'] / r['restic_growth'] for r in series):.3f}"
    )
    print(
        f"after deleting the newest: {deleted['read'] / MiB:.1f} MiB read"
        f" ({deleted['read'] / last['read']:.2f}x the last round's),"
        f" {deleted['s'] / deleted['restic_s']:.3f}x restic's time"
    )


if __name__ == "__main__":
    main()
