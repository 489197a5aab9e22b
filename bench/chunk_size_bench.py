"""Chunk-size benchmark: what 16, 32 and 64 KiB chunks cost a volume and a snapshot.

For each chunk size, in one process (no network, so only the chunk size varies):
- sequential write MB/s into a business volume (1 MiB writes, then a flush);
- snapshot processing MB/s: freeze, read every changed chunk of the view, id,
  zstd, put into a chunk store (the transfer node's per-chunk work);
- metadata: chunk-store index rows and volume metadata rows per GiB written;
- incremental amplification: after N random 4 KiB writes, the bytes the next
  snapshot must read (changed chunks x chunk size) per byte written.
The image mixes random, compressible and zero data; figures are medians.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from nodes.chunk_store import ChunkStore
from nodes.chunks import ChunkCodec, is_zero
from nodes.volume import Volume

MiB = 1 << 20


def image(size: int) -> list[bytes]:
    rng = random.Random(3)
    text = b" ".join(rng.randbytes(6).hex().encode() for _ in range(200_000))
    pieces = []
    for i in range(size // MiB):
        kind = i % 3
        pieces.append(rng.randbytes(MiB) if kind == 0 else text[:MiB] if kind == 1 else bytes(MiB))
    return pieces


def one(work: Path, chunk: int, pieces: list[bytes], random_writes: int) -> dict[str, float]:
    size = len(pieces) * MiB
    volume = Volume.create(work / "vol", size, chunk)
    started = time.perf_counter()
    for i, piece in enumerate(pieces):
        volume.write_live(i * MiB, piece)
    volume.sync()
    write_mbs = size / MiB / (time.perf_counter() - started)
    volume.freeze("full")
    view = volume.view("full")
    codec = ChunkCodec(None)
    store = ChunkStore(work / "store")
    started = time.perf_counter()
    batch: list[tuple[bytes, bytes]] = []
    for idx in volume.changed_chunks("full", since=0):
        data = view.read_chunk(idx)
        if is_zero(data):
            continue
        cid = codec.chunk_id(data)
        batch.append((cid, codec.encode(data, cid)))
        if len(batch) >= 256:
            store.put_many(batch)
            batch = []
    store.put_many(batch)
    process_mbs = size / MiB / (time.perf_counter() - started)
    rows = store.stats().chunks
    volume.commit_base("full")
    volume.release("full")
    rng = random.Random(9)
    for _ in range(random_writes):
        volume.write_live(rng.randrange(size // 4096) * 4096, rng.randbytes(4096))
    volume.freeze("incr")
    changed = len(list(volume.changed_chunks("incr")))
    store.close()
    volume.close()
    return {
        "write_mbs": write_mbs,
        "process_mbs": process_mbs,
        "index_rows_per_gib": rows * (1 << 30) / size,
        "amplification": changed * chunk / (random_writes * 4096),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--random-writes", type=int, default=2000)
    args = parser.parse_args()
    pieces = image(args.size_mib * MiB)
    print(f"image {args.size_mib} MiB; {args.random_writes} random 4 KiB writes; ", end="")
    print(f"median of {args.rounds}")
    header = ("chunk", "write MB/s", "process MB/s", "index rows/GiB", "read amplif.")
    print(f"{header[0]:>7} {header[1]:>11} {header[2]:>13} {header[3]:>15} {header[4]:>13}")
    for chunk in (16 * 1024, 32 * 1024, 64 * 1024):
        runs = []
        for _ in range(args.rounds):
            work = Path(tempfile.mkdtemp(prefix="vmsnap-chunk-"))
            try:
                runs.append(one(work, chunk, pieces, args.random_writes))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{chunk // 1024:>5}Ki {med['write_mbs']:11.1f} {med['process_mbs']:13.1f} "
            f"{med['index_rows_per_gib']:15.0f} {med['amplification']:13.2f}"
        )


if __name__ == "__main__":
    main()
