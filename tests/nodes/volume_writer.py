"""A process that writes to a volume until it is killed, printing every completed step.

python -m tests.nodes.volume_writer synced FOLDER ROUND
    writes record(ROUND, i) for i = 0, 1, ...; syncs; prints i
python -m tests.nodes.volume_writer frozen FOLDER SEED
    freezes view frozen_view(SEED), makes it the base, prints "frozen"; then writes or zeros
    random ranges without syncing, printing "write|zero OFFSET LENGTH" after each
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from nodes.volume import Volume

CHUNK = 4096
ITERATIONS = 2000


def record(round_: int, iteration: int) -> tuple[int, bytes]:
    """Where iteration `iteration` of round `round_` writes, and what: one chunk's worth
    straddling two chunks, recognisable by its round and iteration."""
    stamp = f"round {round_} iteration {iteration:06d}|".encode()
    return iteration * CHUNK + 1000, (stamp * (CHUNK // len(stamp) + 1))[:CHUNK]


def frozen_view(seed: int) -> str:
    """The view the writer freezes before it starts writing."""
    return f"before-crash-{seed}"


def synced(folder: Path, round_: int) -> None:
    volume = Volume.open(folder)
    for iteration in range(ITERATIONS):
        offset, data = record(round_, iteration)
        volume.write_live(offset, data)
        volume.sync()
        print(iteration, flush=True)
    time.sleep(600)


def frozen(folder: Path, seed: int) -> None:
    volume = Volume.open(folder)
    volume.commit_base(volume.freeze(frozen_view(seed)).name)
    print("frozen", flush=True)
    rng = random.Random(seed)
    while True:
        offset = rng.randrange(volume.size)
        length = rng.randrange(1, min(3 * volume.chunk_size, volume.size - offset) + 1)
        if rng.random() < 0.25:
            volume.zero_live(offset, length)
            print("zero", offset, length, flush=True)
        else:
            volume.write_live(offset, rng.randbytes(length))
            print("write", offset, length, flush=True)


if __name__ == "__main__":
    mode, folder, number = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    (synced if mode == "synced" else frozen)(folder, number)
