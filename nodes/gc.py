"""Garbage collection of the backup cluster: mark what live manifests reference, sweep the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from nodes.chunks import ChunkCodec
from nodes.errors import NodeError
from nodes.manifest_store import load_manifest, manifest_pieces
from nodes.replication import BackupCluster

DELETE_BATCH = 4096


class DataGate:
    """Snapshots run side by side; garbage collection runs alone.

    A chunk a running snapshot has just deduplicated against is referenced by
    no committed manifest yet, so a collection must never overlap a snapshot.
    """

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._snapshots = 0
        self._collecting = False

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """Hold while a snapshot writes to the backup cluster."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._collecting)
            self._snapshots += 1
        try:
            yield
        finally:
            async with self._changed:
                self._snapshots -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def collection(self) -> AsyncIterator[None]:
        """Hold while collecting: waits for running snapshots, holds new ones back."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._collecting and not self._snapshots)
            self._collecting = True
        try:
            yield
        finally:
            async with self._changed:
                self._collecting = False
                self._changed.notify_all()


@dataclass
class GcReport:
    """What a collection kept and removed."""

    live_snapshots: int = 0
    referenced: int = 0
    chunks: int = 0
    copies: int = 0
    bytes_reclaimed: int = 0
    unreachable: list[str] = field(default_factory=list)


async def mark(
    cluster: BackupCluster, codec: ChunkCodec, live: Sequence[dict[str, Any]]
) -> set[bytes]:
    """Every chunk a live snapshot needs: manifest indexes, manifest pieces, data chunks.

    Any manifest that cannot be read aborts the collection (nothing is swept).
    """
    marked: set[bytes] = set()
    for snap in live:
        for disk in snap["disk_details"]:
            manifest_id = bytes.fromhex(disk["manifest"])
            marked.add(manifest_id)
            marked.update(await manifest_pieces(cluster, codec, manifest_id))
            manifest = await load_manifest(cluster, codec, manifest_id)
            marked.update(manifest.chunk_ids())
    return marked


async def sweep(cluster: BackupCluster, marked: set[bytes], report: GcReport) -> None:
    """Delete every unmarked copy on every reachable node, then compact."""
    gone: set[bytes] = set()
    for node in cluster.nodes:
        try:
            dead = [cid async for cid in cluster.list_node(node) if cid not in marked]
            for start in range(0, len(dead), DELETE_BATCH):
                batch = dead[start : start + DELETE_BATCH]
                await cluster.peers.call(node, "chunk.delete_many", {"ids": batch})
            reply = await cluster.peers.call(node, "store.compact", {}, timeout=3600)
        except NodeError:
            report.unreachable.append(node)
            continue
        report.copies += len(dead)
        gone.update(dead)
        report.bytes_reclaimed += int(reply["reclaimed"])
    report.chunks = len(gone)


async def collect(
    cluster: BackupCluster,
    codec: ChunkCodec,
    live: Sequence[dict[str, Any]],
    also: set[bytes] | None = None,
) -> GcReport:
    """Mark from the live snapshots' manifests (and `also`), then sweep."""
    report = GcReport(live_snapshots=len(live))
    marked = await mark(cluster, codec, live) | (also or set())
    report.referenced = len(marked)
    await sweep(cluster, marked, report)
    return report
