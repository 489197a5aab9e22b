"""Pipeline CPU benchmark: CPU-seconds per GiB of the transfer's codec and a backup's store.

On `snapshot_bench.py`'s disk (1 MiB extents: 40% zero, 30% text-like, 30% random), in
one process, each figure the median of several rounds of process CPU time:
- codec: zero test, keyed id and encode (zstd + AES-256-GCM) of every chunk, as the
  transfer node does, at the configured `storage.compression_level` and at level 3
  (the reference), with the stored bytes each gives;
- store: a backup node's `put_many` of the encoded chunks in 1 MiB batches, unsynced,
  then one sync (as a snapshot pass does), against the reference of writing the same
  bytes to one file with `os.write` and one fsync.

Figures are per GiB of disk (zero extents included), so they add up to what a full
snapshot costs the transfer node and, times R / backup nodes, each backup node.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from snapshot_bench import MiB, make_image  # noqa: E402

from nodes.chunk_store import ChunkStore  # noqa: E402
from nodes.chunks import ChunkCodec  # noqa: E402
from nodes.config import StorageConfig  # noqa: E402

CHUNK = 64 * 1024
FRAME = 1024 * 1024
KEY = bytes(range(32))
REFERENCE_LEVEL = 3


def cpu_seconds(run: Callable[[int], None], rounds: int) -> float:
    """Median process CPU time of `run(round)` over `rounds` calls."""
    times = []
    for i in range(rounds):
        start = time.process_time()
        run(i)
        times.append(time.process_time() - start)
    return statistics.median(times)


def encode_all(codec: ChunkCodec, plain: list[bytes]) -> list[tuple[bytes, bytes]]:
    """What the transfer node makes of the chunks: (id, stored form), holes skipped."""
    return [
        (chunk_id, codec.encode(data, chunk_id))
        for data in plain
        if not codec.is_zero(data)
        for chunk_id in (codec.chunk_id(data),)
    ]


def frames(items: list[tuple[bytes, bytes]]) -> list[list[tuple[bytes, bytes]]]:
    """The items cut into put_many batches of about 1 MiB, as the transfer sends them."""
    batches: list[list[tuple[bytes, bytes]]] = [[]]
    size = 0
    for item in items:
        batches[-1].append(item)
        size += len(item[1])
        if size >= FRAME:
            batches.append([])
            size = 0
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="disk size")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (median)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    per_gib = (1 << 30) / (args.size_mib * MiB)
    level = StorageConfig().compression_level
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vmsnap-pipeline-") as tmp:
        work = Path(tmp)
        image = work / "disk.raw"
        make_image(image, args.size_mib * MiB)
        raw = image.read_bytes()
        plain = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]
        print(f"{args.size_mib} MiB disk, median of {args.rounds} rounds, CPU-s per GiB of disk")

        stored: dict[int, list[tuple[bytes, bytes]]] = {}
        for lvl in dict.fromkeys((level, REFERENCE_LEVEL)):
            codec = ChunkCodec(KEY, lvl)
            stored[lvl] = encode_all(codec, plain)
            seconds = cpu_seconds(lambda _i, c=codec: encode_all(c, plain), args.rounds)
            size = sum(len(blob) for _cid, blob in stored[lvl]) / MiB * per_gib
            label = "reference" if lvl == REFERENCE_LEVEL else "configured"
            print(f"  codec, zstd level {lvl} ({label}): {seconds * per_gib:6.3f} CPU-s,", end="")
            print(f" {size:7.1f} MiB stored")

        items = stored[level]
        batches = frames(items)

        def put(i: int) -> None:
            folder = work / f"store-{i}"
            with ChunkStore(folder) as store:
                for batch in batches:
                    store.put_many(batch, sync=False)
                store.sync()
            shutil.rmtree(folder)

        def write(i: int) -> None:
            target = work / f"copy-{i}"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for _cid, blob in items:
                    os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            target.unlink()

        store_cpu = cpu_seconds(put, args.rounds) * per_gib
        write_cpu = cpu_seconds(write, args.rounds) * per_gib
        print(f"  store put_many + sync:           {store_cpu:6.3f} CPU-s")
        print(f"  write + fsync (reference):       {write_cpu:6.3f} CPU-s")


if __name__ == "__main__":
    main()
