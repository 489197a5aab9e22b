"""Chunk store benchmark: put and get MB/s of vmsnap's data plane against restic and borg.

Prints, in one run, for one data set of 64 KiB chunks (half random, half compressible
text-like bytes, every chunk distinct so nothing dedups):
- the codec alone: encode (id + zstd + AES-256-GCM when keyed) and decode (+ checks);
- the store alone: put_many of already-encoded blobs (fsync + index commit per batch) and
  get (checksum verified);
- end to end, plain and encrypted: put = read the image file, id, encode, put_many; get =
  get, decode, verify the id (one thread, as one transfer pipeline);
- the reference on the same image file: `restic backup` and `borg create` into a fresh
  repository (encrypted, zstd level 3 for borg, restic's default compression), if installed;
- a raw write baseline: copy the image file and fsync it.

Every rate is logical (plaintext) MB/s, the median of several rounds, each into a fresh
store or repository that is deleted afterwards, so every writer sees the same disk.
Ratios (x times) compare with restic (or borg) and with the raw copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.chunk_store import ChunkStore  # noqa: E402
from nodes.chunks import ChunkCodec  # noqa: E402

CHUNK = 64 * 1024
BATCH = 256
KEY = bytes(range(32))
# Byte frequencies of text-like data: a few symbols dominate, as in logs, configs, code.
_SKEW = bytes(b" etaoinshrdlucmfwyp\n.,0123456789"[i % 32] if i < 192 else i for i in range(256))


def make_image(path: Path, size: int) -> None:
    """Write `size` bytes alternating random and compressible 64 KiB chunks."""
    with path.open("wb") as out:
        for n in range(size // CHUNK):
            raw = os.urandom(CHUNK)
            out.write(raw if n % 2 else raw.translate(_SKEW))
        out.flush()
        os.fsync(out.fileno())


def chunks_of(path: Path) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while block := f.read(CHUNK):
            yield block


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_rate(size: int, rounds: int, run: Callable[[int], float]) -> float:
    """Median MB/s over `rounds` calls of `run(round)`, which returns seconds taken."""
    return statistics.median(size / run(i) / 1e6 for i in range(rounds))


class Bench:
    def __init__(self, work: Path, size: int, rounds: int) -> None:
        self.work, self.size, self.rounds = work, size, rounds
        self.image = work / "image.raw"
        make_image(self.image, size)
        self.plain = list(chunks_of(self.image))
        self.results: list[tuple[str, float]] = []

    def record(self, name: str, rate: float) -> None:
        self.results.append((name, rate))
        print(f"  {name:<34} {rate:9.1f} MB/s", flush=True)

    def fresh(self, name: str, i: int) -> Path:
        folder = self.work / f"{name}-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        return folder

    def codec(self, label: str, codec: ChunkCodec) -> None:
        ids = [codec.chunk_id(p) for p in self.plain]
        stored = [codec.encode(p, i) for p, i in zip(self.plain, ids, strict=True)]
        ratio = sum(map(len, stored)) / self.size
        print(f"  ({label}: stored size is {ratio:.1%} of the plaintext)")

        def encode(_: int) -> float:
            return timed(lambda: [codec.encode(p) for p in self.plain])

        def decode(_: int) -> float:
            return timed(lambda: [codec.decode(i, s) for i, s in zip(ids, stored, strict=True)])

        self.record(f"codec encode, {label}", median_rate(self.size, self.rounds, encode))
        self.record(f"codec decode, {label}", median_rate(self.size, self.rounds, decode))
        self.store_only(label, list(zip(ids, stored, strict=True)))
        self.end_to_end(label, codec)

    def store_only(self, label: str, items: list[tuple[bytes, bytes]]) -> None:
        def put(store: ChunkStore) -> None:
            self._put_batches(store, iter(items))

        def get(store: ChunkStore) -> None:
            for cid, _ in items:
                store.get(cid)

        self.put_then_get(f"store {{}}, {label}", put, get)

    def end_to_end(self, label: str, codec: ChunkCodec) -> None:
        def encoded() -> Iterator[tuple[bytes, bytes]]:
            for plaintext in chunks_of(self.image):
                cid = codec.chunk_id(plaintext)
                yield cid, codec.encode(plaintext, cid)

        def put(store: ChunkStore) -> None:
            self._put_batches(store, encoded())

        def get(store: ChunkStore) -> None:
            for cid in ids:
                codec.decode(cid, store.get(cid))

        ids = [codec.chunk_id(p) for p in self.plain]
        self.put_then_get(f"vmsnap {{}}, {label}", put, get)

    def put_then_get(
        self, name: str, put: Callable[[ChunkStore], None], get: Callable[[ChunkStore], None]
    ) -> None:
        """Each round: put into a fresh store, get everything back, delete the store."""
        times: list[tuple[float, float]] = []
        for i in range(self.rounds):
            folder = self.fresh("store", i)
            with ChunkStore(folder) as store:
                times.append((timed(lambda: put(store)), timed(lambda: get(store))))
            shutil.rmtree(folder)
        for k, op in enumerate(("put", "get")):
            self.record(name.format(op), statistics.median(self.size / t[k] / 1e6 for t in times))

    @staticmethod
    def _put_batches(store: ChunkStore, items: Iterator[tuple[bytes, bytes]]) -> None:
        batch: list[tuple[bytes, bytes]] = []
        for item in items:
            batch.append(item)
            if len(batch) == BATCH:
                store.put_many(batch)
                batch = []
        store.put_many(batch)

    def external(self, name: str, init: list[str], backup: list[str], env: dict[str, str]) -> None:
        def run(i: int) -> float:
            repo = self.fresh(name, i)
            subprocess.run([*init, str(repo)], env=env, check=True, capture_output=True)
            argv = [arg.replace("{repo}", str(repo)) for arg in backup]
            seconds = timed(lambda: subprocess.run(argv, env=env, check=True, capture_output=True))
            shutil.rmtree(repo)
            return seconds

        self.record(name, median_rate(self.size, self.rounds, run))

    def references(self) -> None:
        env = {**os.environ, "RESTIC_PASSWORD": "bench", "BORG_PASSPHRASE": "bench"}
        env["BORG_BASE_DIR"] = str(self.work / "borg-home")
        if shutil.which("restic"):
            cache, image = str(self.work / "restic-cache"), str(self.image)
            self.external(
                "restic backup (reference)",
                ["restic", "--cache-dir", cache, "init", "--repo"],
                ["restic", "--cache-dir", cache, "--repo", "{repo}", "backup", "--quiet", image],
                env,
            )
        else:
            print("  restic not installed (apt-get install -y restic)")
        if shutil.which("borg"):
            self.external(
                "borg create (reference)",
                ["borg", "init", "--encryption=repokey-blake2"],
                ["borg", "create", "--compression", "zstd,3", "{repo}::a", str(self.image)],
                env,
            )
        else:
            print("  borg not installed (apt-get install -y borgbackup)")

        def copy(i: int) -> float:
            target = self.fresh("copy", i)

            def write() -> None:
                shutil.copyfile(self.image, target)
                with target.open("rb+") as f:
                    os.fsync(f.fileno())

            seconds = timed(write)
            target.unlink()
            return seconds

        self.record("raw copy + fsync (baseline)", median_rate(self.size, self.rounds, copy))

    def table(self) -> None:
        rates = dict(self.results)
        reference = next((k for k in rates if "(reference)" in k), None)
        baseline = rates["raw copy + fsync (baseline)"]
        ref_head = f"vs {reference.split()[0]}" if reference else ""
        print(f"\n{'operation':<36} {'MB/s':>9} {ref_head:>10} {'vs raw copy':>11}")
        print("-" * 69)
        for name, rate in self.results:
            versus = f"{rate / rates[reference]:.2f}" if reference else ""
            print(f"{name:<36} {rate:9.1f} {versus:>10} {rate / baseline:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="data set size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vmsnap-bench-") as tmp:
        bench = Bench(Path(tmp), args.size_mib * 1024 * 1024, args.rounds)
        print(f"{args.size_mib} MiB of 64 KiB chunks, median of {args.rounds} rounds, {tmp}")
        print(f"CPUs: {os.cpu_count()}, python {sys.version.split()[0]}")
        bench.codec("plain", ChunkCodec(None))
        bench.codec("encrypted", ChunkCodec(KEY))
        bench.references()
        bench.table()


if __name__ == "__main__":
    main()
