"""Import and export of VM disk images, streamed to and from a business node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.errors import InputError
from nodes.chunks import is_zero
from nodes.client import NodeClient
from nodes.config import Config

PIECE = 4 * 1024 * 1024
WRITE_RUN = 1024 * 1024
"""Largest write of an import: half the smallest frame a node may be configured to take."""
EXTENT_WINDOW = 1024 * 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"
Progress = Callable[[int], None]


def image_format(path: Path) -> str:
    """``qcow2`` or ``raw``, by the file's magic."""
    try:
        with path.open("rb") as image:
            return "qcow2" if image.read(4) == QCOW2_MAGIC else "raw"
    except FileNotFoundError:
        raise InputError(f"no such image: {path}") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None


def image_size(path: Path, fmt: str) -> int:
    """The virtual size of the image in bytes."""
    if fmt == "raw":
        return path.stat().st_size
    tool = shutil.which("qemu-img")
    if tool is None:
        raise InputError(
            f"{path} is {fmt}: importing it needs qemu-img (Debian package qemu-utils)"
        )
    info = subprocess.run(
        [tool, "info", "--output=json", "-f", fmt, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if info.returncode != 0:
        raise InputError(f"qemu-img cannot read {path}: {info.stderr.strip().splitlines()[-1]}")
    return int(json.loads(info.stdout)["virtual-size"])


def check_fits(path: Path, size: int, disk: dict[str, Any]) -> None:
    """Refuse an image larger than the disk."""
    if size > disk["size"]:
        raise InputError(
            f"{path} is {size} bytes, larger than disk {disk['resource_id']} "
            f"of VM {disk['vm']} ({disk['size']} bytes)"
        )


async def import_raw(
    config: Config, disk: dict[str, Any], path: Path, progress: Progress
) -> dict[str, int]:
    """Write a raw image into the disk: data chunks written, zero chunks made holes."""
    chunk = int(disk["chunk_size"])
    target = {"vm": disk["vm"], "resource_id": disk["resource_id"]}
    written = zeroed = 0
    async with _client(config, disk) as client:
        with path.open("rb") as image:
            offset = 0
            while piece := image.read(PIECE):
                calls = []
                for at, data, zeros in _runs(piece, offset, chunk):
                    if zeros:
                        request = {**target, "offset": at, "length": zeros}
                        calls.append(client.call("volume.zero", request))
                        zeroed += zeros
                    else:
                        calls.append(
                            client.call("volume.write", {**target, "offset": at, "data": data})
                        )
                        written += len(data)
                await asyncio.gather(*calls)
                offset += len(piece)
                progress(len(piece))
        if offset < disk["size"]:
            await client.call(
                "volume.zero", {**target, "offset": offset, "length": disk["size"] - offset}
            )
        await client.call("volume.flush", target)
    return {"bytes_written": written, "bytes_zero": zeroed}


def _runs(piece: bytes, offset: int, chunk: int) -> list[tuple[int, bytes, int]]:
    """A piece of an image at `offset` as writes and zeroings of runs of chunks.

    Each item is (offset, data, 0) for a run of neighbouring chunks holding data, at
    most `WRITE_RUN` bytes, or (offset, b"", length) for a run of neighbouring all-zero
    chunks, zeroed in one request.
    """
    runs: list[tuple[int, bytes, int]] = []
    start = 0
    while start < len(piece):
        zero = is_zero(piece[start : start + chunk])
        end = start + chunk
        while end < len(piece) and is_zero(piece[end : end + chunk]) == zero:
            if not zero and end - start >= WRITE_RUN:
                break
            end += chunk
        end = min(end, len(piece))
        runs.append(
            (offset + start, b"", end - start) if zero else (offset + start, piece[start:end], 0)
        )
        start = end
    return runs


def import_with_qemu(disk: dict[str, Any], path: Path, fmt: str) -> None:
    """Convert a non-raw image straight into the disk's NBD export."""
    tool = shutil.which("qemu-img")
    if tool is None:
        raise InputError(
            f"{path} is {fmt}: importing it needs qemu-img (Debian package qemu-utils)"
        )
    if disk.get("tls"):
        raise InputError(
            f"{path} is {fmt}: its import goes through NBD, which requires TLS here;"
            " convert it to raw first (qemu-img convert -O raw) and import that"
        )
    done = subprocess.run(
        [tool, "convert", "-n", "-f", fmt, "-O", "raw", str(path), disk["url"]],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise InputError(f"qemu-img convert failed: {done.stderr.strip()}")


async def export_raw(
    config: Config, disk: dict[str, Any], out: Path, progress: Progress
) -> dict[str, int]:
    """Write the live disk to `out` as a sparse raw file (holes stay holes)."""
    target = {"vm": disk["vm"], "resource_id": disk["resource_id"]}
    size = int(disk["size"])
    copied = 0
    fd, tmp = _staging(out)
    try:
        with os.fdopen(fd, "r+b") as sink:
            async with _client(config, disk) as client:
                offset = 0
                while offset < size:
                    length = min(EXTENT_WINDOW, size - offset)
                    extents = await client.call(
                        "volume.extents", {**target, "offset": offset, "length": length}
                    )
                    for ext_len, flags in extents["extents"]:
                        if not flags & 1:
                            copied += await _copy_range(
                                client, target, sink.fileno(), offset, ext_len
                            )
                        offset += ext_len
                        progress(ext_len)
            sink.truncate(size)
            os.fsync(sink.fileno())
        _publish(Path(tmp), out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"bytes_copied": copied, "size": size}


async def _copy_range(
    client: NodeClient, target: dict[str, str], fd: int, offset: int, length: int
) -> int:
    copied = 0
    while copied < length:
        n = min(PIECE, length - copied)
        reply = await client.call("volume.read", {**target, "offset": offset + copied, "length": n})
        data: bytes = reply["data"]
        if data.count(0) != len(data):
            os.pwrite(fd, data, offset + copied)
        copied += n
    return copied


def _staging(out: Path) -> tuple[int, str]:
    """Open the temporary file an export is written to, next to `out`."""
    try:
        return tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    except OSError as err:
        raise InputError(f"cannot write {out}: {err.strerror}") from None


def _publish(tmp: Path, out: Path) -> None:
    """Give a finished export its name."""
    try:
        tmp.replace(out)
    except OSError as err:
        raise InputError(f"cannot write {out}: {err.strerror}") from None


def _client(config: Config, disk: dict[str, Any]) -> NodeClient:
    return NodeClient(
        disk["host"],
        disk["port"],
        config.secret(),
        peer=disk["node"],
        timeout=config.wire.timeout,
        max_frame=config.wire.max_frame,
    )


def run(coroutine: Any) -> Any:
    """Run one coroutine to completion (the CLI is synchronous)."""
    return asyncio.run(coroutine)


async def export_snapshot(
    config: Config, disk: dict[str, Any], out: Path, progress: Progress
) -> dict[str, int]:
    """Write one disk of a snapshot, fetched from the backup cluster, as a sparse raw file."""
    from nodes.chunks import ChunkCodec
    from nodes.manifest_store import load_manifest
    from nodes.patches import read_chunks
    from nodes.peers import Peers, node_names
    from nodes.replication import BackupCluster

    peers = Peers(config, "cli")
    codec = ChunkCodec(config.data_key(), config.storage.compression_level)
    cluster = BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)
    fd, tmp = _staging(out)
    copied = 0
    try:
        with os.fdopen(fd, "r+b") as sink:
            manifest = await load_manifest(cluster, codec, bytes.fromhex(disk["manifest"]))
            indexes = [idx for idx, _cid in manifest.entries]
            for start in range(0, len(indexes), 64):
                batch = indexes[start : start + 64]
                chunks = await read_chunks(cluster.get, codec, manifest.wanted(batch))
                for idx, data in zip(batch, chunks, strict=True):
                    os.pwrite(sink.fileno(), data, idx * manifest.chunk_size)
                    copied += len(data)
                    progress(len(data))
            sink.truncate(manifest.size)
            os.fsync(sink.fileno())
        _publish(Path(tmp), out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        await peers.close()
    return {"bytes_copied": copied, "size": manifest.size}
