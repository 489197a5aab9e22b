"""Storage benchmark on a real local network: replicated put/get with R=2, node memory.

In one run, on `vmsnap up`'s default topology (controller, business, transfer,
3 backup nodes, R=2):
- the whole disk image is written into a VM disk over NBD (qemu-img convert),
  frozen, and processed by the transfer node into the backup cluster: MB/s of
  disk data (id, dedup query, zstd, push to 2 nodes) — the replicated put;
- every stored chunk is read back from the cluster and decoded: get MB/s;
- the reference on the same image: `restic backup` into a fresh local repository;
- the resident memory (RSS) of every node after the work, with a small disk and
  with a large one (the goal: independent of volume size).
The image is realistic: a mix of random, compressible and zero regions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nodes.chunks import ChunkCodec
from nodes.config import load_config
from nodes.peers import Peers, node_names
from nodes.replication import BackupCluster

MiB = 1 << 20


def vmsnap(folder: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def make_image(path: Path, size: int) -> None:
    """Thirds: random, compressible text-like data, zeros (in 1 MiB stripes)."""
    rng = random.Random(7)
    words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(512)]
    with path.open("wb") as out:
        for i in range(size // MiB):
            kind = i % 3
            if kind == 0:
                out.write(rng.randbytes(MiB))
            elif kind == 1:
                out.write((b" ".join(rng.choices(words, k=MiB // 8)) * 2)[:MiB])
            else:
                out.write(bytes(MiB))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def node_memory(folder: Path) -> dict[str, int]:
    runs = [json.loads(p.read_text()) for p in (folder / "data" / "run").glob("*.json")]
    return {r["name"]: rss_kib(r["pid"]) for r in runs}


async def call(config: Any, node: str, op: str, args: dict[str, Any], timeout: float = 3600) -> Any:
    peers = Peers(config, "bench")
    try:
        return await peers.call(node, op, args, timeout=timeout)
    finally:
        await peers.close()


async def get_all(config: Any, ids: list[bytes]) -> float:
    peers = Peers(config, "bench")
    codec = ChunkCodec(config.data_key(), config.storage.compression_level)
    started = time.perf_counter()
    try:
        cluster = BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)
        total = 0
        for i in range(0, len(ids), 64):
            batch = ids[i : i + 64]
            found = await cluster.get(batch)
            total += sum(len(codec.decode(cid, blob)) for cid, blob in found.items())
    finally:
        await peers.close()
    return total / MiB / (time.perf_counter() - started)


def run_network(work: Path, size: int, image: Path) -> dict[str, Any]:
    folder = work / f"net-{size}"
    subprocess.run(
        [sys.executable, "-m", "cli", "init", "--dir", str(folder)], check=True, capture_output=True
    )
    vmsnap(folder, "up")
    try:
        vmsnap(
            folder, "vm", "register", "bench", "--ip", "10.0.0.1", "--disk", f"system:root:{size}"
        )
        url = vmsnap(folder, "disk", "url", "bench", "root").strip()
        subprocess.run(
            ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), url], check=True
        )
        config = load_config(folder / "vmsnap.toml", {})
        target = {"vm": "bench", "resource_id": "root"}
        asyncio.run(call(config, "business-1", "volume.freeze", {**target, "view": "b"}))
        started = time.perf_counter()
        stats = asyncio.run(
            call(
                config,
                "transfer-1",
                "transfer.process",
                {"node": "business-1", **target, "view": "b", "since": 0},
            )
        )
        put_seconds = time.perf_counter() - started
        ids = sorted({cid for _idx, cid in stats["chunk_map"] if cid is not None})
        get_rate = asyncio.run(get_all(config, ids))
        return {
            "put_mbs": size / MiB / put_seconds,
            "get_mbs": get_rate,
            "stored_mib": stats["bytes_stored"] / MiB,
            "copies": stats["copies_written"],
            "memory": node_memory(folder),
        }
    finally:
        vmsnap(folder, "down")


def restic_rate(work: Path, image: Path, size: int) -> float | None:
    if shutil.which("restic") is None:
        return None
    repo = work / "restic-repo"
    env = {**os.environ, "RESTIC_PASSWORD": "bench"}
    subprocess.run(
        ["restic", "init", "--repo", str(repo)], env=env, check=True, capture_output=True
    )
    started = time.perf_counter()
    subprocess.run(
        ["restic", "--repo", str(repo), "backup", str(image)],
        env=env,
        check=True,
        capture_output=True,
    )
    return size / MiB / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="the large disk")
    parser.add_argument("--small-mib", type=int, default=256, help="the small disk")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmsnap-bench-", dir=args.dir))
    try:
        results = {}
        for size_mib in (args.small_mib, args.size_mib):
            image = work / f"image-{size_mib}.raw"
            make_image(image, size_mib * MiB)
            results[size_mib] = run_network(work, size_mib * MiB, image)
        big = results[args.size_mib]
        restic = restic_rate(work, work / f"image-{args.size_mib}.raw", args.size_mib * MiB)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"machine: {os.cpu_count()} cores; image {args.size_mib} MiB "
        "(1/3 random, 1/3 text, 1/3 zeros)"
    )
    print(f"{'replicated put, R=2 (MB/s of disk data)':52} {big['put_mbs']:10.1f}")
    print(f"{'get from the cluster + decode (MB/s)':52} {big['get_mbs']:10.1f}")
    if restic is not None:
        print(f"{'reference: restic backup of the image (MB/s)':52} {restic:10.1f}")
        print(f"{'  ratio put / restic':52} {big['put_mbs'] / restic:10.2f}")
    print(f"{'stored after dedup+zstd (MiB, one copy)':52} {big['stored_mib']:10.1f}")
    print(f"{'copies written':52} {big['copies']:10d}")
    print(
        f"\n{'node RSS (MiB)':14} {f'{args.small_mib} MiB disk':>14} "
        f"{f'{args.size_mib} MiB disk':>14}"
    )
    for node in sorted(big["memory"]):
        small = results[args.small_mib]["memory"].get(node, 0) / 1024
        print(f"{node:14} {small:14.1f} {big['memory'][node] / 1024:14.1f}")


if __name__ == "__main__":
    main()
