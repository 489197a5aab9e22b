"""Verify a snapshot the way an auditor would: from the contract's root down to every chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from ledger.contract import SnapshotStatus, SnapshotView
from nodes.chunks import ChunkCodec
from nodes.errors import ChunkCorrupted, ChunkMissing, ManifestCorrupted
from nodes.manifest import Manifest, snapshot_root
from nodes.manifest_store import load_manifest
from nodes.patches import read_chunks
from nodes.replication import BackupCluster
from nodes.task_groups import run_all

BATCH = 64
IN_FLIGHT = 4
"""Batches of chunks fetched and checked at once: the fetches overlap the decoding."""
A = TypeVar("A")
B = TypeVar("B")


@dataclass
class SnapshotAudit:
    """What verifying one snapshot checked and found."""

    snapshot: str
    vm: str
    contract_status: str = ""
    contract_root: str = ""
    recomputed_root: str = ""
    chunks_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def plain(self) -> dict[str, Any]:
        """As plain data, with the verdict."""
        return {**asdict(self), "ok": self.ok}


async def verify_snapshot(
    snap: dict[str, Any], record: SnapshotView, cluster: BackupCluster, codec: ChunkCodec
) -> SnapshotAudit:
    """Check the contract's `record`, every manifest and every chunk of `snap`."""
    audit = SnapshotAudit(snapshot=snap["id"], vm=snap["vm"])
    audit.contract_status = record.status.name.lower()
    audit.contract_root = record.root.hex()
    if record.status != SnapshotStatus.COMMITTED:
        audit.problems.append(f"the contract records the snapshot as {audit.contract_status}")
        return audit
    roots: dict[str, bytes] = {}
    for disk in snap["disk_details"]:
        manifest = await _manifest(audit, disk, cluster, codec)
        if manifest is None:
            continue
        roots[disk["resource_id"]] = manifest.root()
        await _chunks(audit, manifest, cluster, codec)
    recomputed = snapshot_root(roots)
    audit.recomputed_root = recomputed.hex()
    if recomputed != record.root:
        audit.problems.append("the recomputed root differs from the root on chain")
    return audit


async def _manifest(
    audit: SnapshotAudit, disk: dict[str, Any], cluster: BackupCluster, codec: ChunkCodec
) -> Manifest | None:
    name = disk["resource_id"]
    try:
        manifest = await load_manifest(cluster, codec, bytes.fromhex(disk["manifest"]))
    except (ManifestCorrupted, ChunkCorrupted, ChunkMissing) as err:
        audit.problems.append(f"disk {name}: manifest unreadable: {err}")
        return None
    if (manifest.snapshot, manifest.vm, manifest.resource_id) != (audit.snapshot, audit.vm, name):
        audit.problems.append(f"disk {name}: the manifest names another snapshot or disk")
    return manifest


async def _chunks(
    audit: SnapshotAudit, manifest: Manifest, cluster: BackupCluster, codec: ChunkCodec
) -> None:
    ids = sorted(manifest.chunk_ids())

    async def stored(batch: list[bytes]) -> tuple[list[str], list[int]]:
        try:
            found = await cluster.get(batch)
        except ChunkMissing as err:
            return [f"disk {manifest.resource_id}: {err}"], []
        return await asyncio.to_thread(_decode_all, codec, found)

    for problems, sizes in await _in_flight(stored, _cut(ids)):
        audit.problems.extend(problems)
        audit.chunks_checked += len(sizes)
        audit.bytes_checked += sum(sizes)

    async def patched(indexes: list[int]) -> list[str]:
        return await _patched(manifest, indexes, cluster, codec)

    for problems in await _in_flight(patched, _cut(sorted(manifest.patches))):
        audit.problems.extend(problems)


async def _patched(
    manifest: Manifest, indexes: list[int], cluster: BackupCluster, codec: ChunkCodec
) -> list[str]:
    """Rebuild patched entries and check each against its chunk id (one by one on a failure)."""
    try:
        await read_chunks(cluster.get, codec, manifest.wanted(indexes))
    except (ChunkCorrupted, ChunkMissing) as err:
        if len(indexes) == 1:
            return [f"disk {manifest.resource_id}: chunk {indexes[0]}: {err}"]
    else:
        return []
    problems: list[str] = []
    for index in indexes:
        problems.extend(await _patched(manifest, [index], cluster, codec))
    return problems


def _cut(items: list[A]) -> list[list[A]]:
    """`items` in batches of `BATCH`."""
    return [items[start : start + BATCH] for start in range(0, len(items), BATCH)]


async def _in_flight(check: Callable[[A], Coroutine[Any, Any, B]], batches: list[A]) -> list[B]:
    """`check` of each batch, `IN_FLIGHT` at a time, the results in order."""
    results: list[B] = []
    for start in range(0, len(batches), IN_FLIGHT):
        results.extend(await run_all(check(b) for b in batches[start : start + IN_FLIGHT]))
    return results


def _decode_all(codec: ChunkCodec, found: dict[bytes, bytes]) -> tuple[list[str], list[int]]:
    """Each stored chunk decoded and checked: the problems, and the plain sizes of the good."""
    problems, sizes = [], []
    for chunk_id, blob in found.items():
        try:
            sizes.append(len(codec.decode(chunk_id, blob)))
        except ChunkCorrupted as err:
            problems.append(str(err))
    return problems, sizes
