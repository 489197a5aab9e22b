"""Verify a snapshot the way an auditor would: from the contract's root down to every chunk."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from ledger.contract import SnapshotStatus, SnapshotView
from nodes.chunks import ChunkCodec
from nodes.errors import ChunkCorrupted, ChunkMissing, ManifestCorrupted
from nodes.manifest import Manifest, snapshot_root
from nodes.manifest_store import load_manifest
from nodes.patches import read_chunks
from nodes.replication import BackupCluster

BATCH = 64


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
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        try:
            found = await cluster.get(batch)
        except ChunkMissing as err:
            audit.problems.append(f"disk {manifest.resource_id}: {err}")
            continue
        sizes = await asyncio.to_thread(_decode_all, codec, found, audit)
        audit.chunks_checked += len(sizes)
        audit.bytes_checked += sum(sizes)
    patched = sorted(manifest.patches)
    for start in range(0, len(patched), BATCH):
        await _patched(audit, manifest, patched[start : start + BATCH], cluster, codec)


async def _patched(
    audit: SnapshotAudit,
    manifest: Manifest,
    indexes: list[int],
    cluster: BackupCluster,
    codec: ChunkCodec,
) -> None:
    """Rebuild patched entries and check each against its chunk id (one by one on a failure)."""
    try:
        await read_chunks(cluster.get, codec, manifest.wanted(indexes))
    except (ChunkCorrupted, ChunkMissing):
        if len(indexes) == 1:
            raise
    else:
        return
    for index in indexes:
        try:
            await _patched(audit, manifest, [index], cluster, codec)
        except (ChunkCorrupted, ChunkMissing) as err:
            audit.problems.append(f"disk {manifest.resource_id}: chunk {index}: {err}")


def _decode_all(codec: ChunkCodec, found: dict[bytes, bytes], audit: SnapshotAudit) -> list[int]:
    sizes = []
    for chunk_id, blob in found.items():
        try:
            sizes.append(len(codec.decode(chunk_id, blob)))
        except ChunkCorrupted as err:
            audit.problems.append(str(err))
    return sizes
