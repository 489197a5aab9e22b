"""A volume's 4 KiB write latency in process, idle and beside writers that fsync.

Random 4 KiB `Volume.write_live` calls on a 256 MiB volume, one every 2 ms as in
bench/snapshot_bench.py's probe (so about half of them are a chunk's first write in the
generation, which commits metadata), first with the machine as it is, then while two other
processes append 1 MiB blocks and fsync every 4, as backup nodes do during a snapshot. The
reference: plain `os.pwrite` of the same blocks to a raw file, measured the same way. A
thread checkpoints the volume's metadata every 2 s, as the business node does.
Prints p50/p99 in microseconds per round, then the medians.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from interference_bench import DISK

from nodes.volume import Volume

MiB = 1 << 20
BLOCK = 4096
SIZE = 256 * MiB
PACE = 0.002


def probe(write: Callable[[int, bytes], None], count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    block = os.urandom(BLOCK)
    found = []
    for _ in range(count):
        offset = rng.randrange(SIZE // BLOCK) * BLOCK
        started = time.perf_counter_ns()
        write(offset, block)
        found.append((time.perf_counter_ns() - started) / 1000)
        time.sleep(PACE)
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def one_round(work: Path, count: int, seed: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for load in ("idle", "fsync"):
        hogs = []
        if load == "fsync":
            hogs = [
                subprocess.Popen([sys.executable, "-c", DISK, str(work / f"hog{i}")])
                for i in range(2)
            ]
            time.sleep(0.5)
        try:
            volume = Volume.create(work / f"volume-{load}", SIZE)
            raw = os.open(work / f"raw-{load}", os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(raw, SIZE)
            try:
                with checkpoints(volume):
                    ours = probe(volume.write_live, count, seed)
                plain = probe(partial(_pwrite, raw), count, seed)
            finally:
                volume.close()
                os.close(raw)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        for name, values in (("volume", ours), ("pwrite", plain)):
            found[f"{name} {load} p50"] = percentile(values, 0.5)
            found[f"{name} {load} p99"] = percentile(values, 0.99)
    return found


def _pwrite(fd: int, offset: int, data: bytes) -> None:
    os.pwrite(fd, data, offset)


@contextmanager
def checkpoints(volume: Volume) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(2.0):
            volume.checkpoint()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=2000)
    args = parser.parse_args()
    rounds = []
    for n in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="vmsnap-volwrite-"))
        try:
            rounds.append(one_round(work, args.writes, n))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(_line(str(n + 1), rounds[-1]))
    print(_line("med", {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}))


def _line(label: str, row: dict[str, float]) -> str:
    cells = " ".join(
        f"{name} {load} {row[f'{name} {load} p50']:.0f}/{row[f'{name} {load} p99']:.0f}"
        for name in ("volume", "pwrite")
        for load in ("idle", "fsync")
    )
    return f"{label:4} p50/p99 us: {cells}"


if __name__ == "__main__":
    main()
