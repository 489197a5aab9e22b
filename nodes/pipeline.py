"""The transfer pipeline: a frozen view's changed chunks to R backup nodes, whole or patched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ledger.errors import VmsnapError
from nodes.block_masks import BLOCK, block_count
from nodes.chunks import ChunkCodec, is_zero
from nodes.manifest import Manifest
from nodes.patches import MAX_LAYERS, Layer, Patch
from nodes.peers import Peers
from nodes.replication import BackupCluster
from nodes.task_groups import first_error

A = TypeVar("A")
B = TypeVar("B")
BATCH = 64
PATCH_BATCH = 256
READ_CALL = 16
BLOCK_CALL = 64
BLOCK_CALL_BYTES = 512 * 1024
"""At most this many bytes of blocks per `volume.read_blocks` answer: half the smallest frame."""
IN_FLIGHT = 3
STORERS = 2
Stem = tuple[bytes | None, tuple[Layer, ...], int]
"""What a patch is read for: base id (None: a hole), the layers it goes over, block mask."""
Planned = tuple[int, Stem | None]
"""A changed chunk's index, and its patch's stem, or None to read it whole."""
PatchRead = tuple[int, bytes | None, tuple[Layer, ...], int]
"""A chunk to read as the blocks of a patch: index, base id, layers under it, mask."""


@dataclass
class TransferStats:
    """What one pass over a view did."""

    chunks_read: int = 0
    zero_chunks: int = 0
    new_chunks: int = 0
    deduplicated: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0
    copies_written: int = 0
    patched_chunks: int = 0
    seconds: float = 0.0
    chunk_map: dict[int, bytes | None] = field(default_factory=dict)
    patches: dict[int, Patch] = field(default_factory=dict)


@dataclass
class Batch:
    """Chunks read from a view, whole or as the blocks a patch needs.

    whole:   (index, plaintext; ``b""`` when all zero)
    partial: (index, content id or None when all zero, base id or None, layers under, mask,
              blocks)
    """

    whole: list[tuple[int, bytes]]
    partial: list[tuple[int, bytes | None, bytes | None, tuple[Layer, ...], int, bytes]]
    plain_bytes: int


@dataclass(frozen=True)
class Source:
    """Where a frozen view is: business node, VM disk and view name."""

    node: str
    vm: str
    resource_id: str
    view: str

    def args(self) -> dict[str, Any]:
        """Arguments naming the view in business-node requests."""
        return {"vm": self.vm, "resource_id": self.resource_id, "view": self.view}


class Pipeline:
    """Moves chunks from a business node's frozen view to the backup cluster.

    Batches of 64 chunks flow through: read (business node) → id and zero
    test → ask the cluster which copies are missing → compress and encrypt
    only those → push to their R nodes. Two storers take batches from one
    reader, so one batch's network waits overlap the other's hashing; at most
    five batches are in memory; hashing and compression run on a thread pool,
    off the event loop. Backup nodes write the copies back as they come and
    make them durable with one sync each at the end of the pass, before the
    pass returns (and so before any commit).

    With a parent manifest, a changed chunk whose written blocks (with those of
    its parent's patch) are at most half of it is read as those blocks only, and
    stored as a patch (``nodes/patches.py``): on its parent's chunk, or as one more
    layer over its parent's patch; a patch already `MAX_LAYERS` deep is folded into
    one layer of every block it covers. The business node hashes the whole chunk
    for its content id. When that content is already stored whole, the entry refers
    to it instead.
    """

    def __init__(self, peers: Peers, cluster: BackupCluster, codec: ChunkCodec) -> None:
        self.peers = peers
        self.cluster = cluster
        self.codec = codec
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="codec")
        self.progress: dict[str, int] = {}

    def close(self) -> None:
        """Stop the worker threads."""
        self._cpu.shutdown(wait=True)

    async def run(
        self, source: Source, since: int | None = None, parent: Manifest | None = None
    ) -> TransferStats:
        """Process the chunks of `source` changed after generation `since` (default: the base).

        `parent`, the manifest of the snapshot at generation `since`, allows patches.
        """
        started = time.monotonic()
        self.cluster.down.clear()
        stats = TransferStats()
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(IN_FLIGHT)
        self.progress[source.view] = 0
        claimed: set[bytes] = set()
        unsynced: dict[str, set[bytes]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(source, since, parent, queue))
                for _worker in range(STORERS):
                    group.create_task(self._store(queue, stats, source.view, claimed, unsynced))
            await self.cluster.sync(unsynced)
        except* VmsnapError as failed:
            raise first_error(failed) from None  # the cause, not "unhandled errors in a TaskGroup"
        finally:
            self.progress.pop(source.view, None)
        stats.seconds = time.monotonic() - started
        return stats

    async def _read(
        self,
        source: Source,
        since: int | None,
        parent: Manifest | None,
        queue: asyncio.Queue[Batch | None],
    ) -> None:
        start = 0
        while True:
            args = {**source.args(), "start": start, "masks": parent is not None}
            if since is not None:
                args["since"] = since
            page = await self.peers.call(source.node, "volume.changed", args)
            indexes: list[int] = page["indexes"]
            masks: list[int | None] = page.get("masks") or [None] * len(indexes)
            for whole, partial in _batches(_plan(parent, indexes, masks)):
                await queue.put(await self._read_batch(source, whole, partial))
            if not page["more"] or not indexes:
                break
            start = indexes[-1] + 1
        for _worker in range(STORERS):
            await queue.put(None)

    async def _read_batch(
        self, source: Source, whole: list[int], partial: list[PatchRead]
    ) -> Batch:
        """Read in small calls, so the business node never stalls its VMs' I/O for long.

        The calls of one batch are in flight together: the business node reads one
        while it sends another, and the round trips overlap.
        """
        chunk_calls = [
            self.peers.call_views(
                source.node,
                "volume.read_chunks",
                {**source.args(), "indexes": whole[i : i + READ_CALL]},
            )
            for i in range(0, len(whole), READ_CALL)
        ]
        block_calls = [
            self.peers.call_views(
                source.node,
                "volume.read_blocks",
                {
                    **source.args(),
                    "indexes": [idx for idx, *_stem, _mask in group],
                    "masks": [mask for *_read, mask in group],
                },
            )
            for group in _block_calls(partial)
        ]
        replies = await asyncio.gather(*chunk_calls, *block_calls)
        chunk_replies, block_replies = replies[: len(chunk_calls)], replies[len(chunk_calls) :]
        chunks = [chunk for reply in chunk_replies for chunk in reply["chunks"]]
        ids = [cid for reply in block_replies for cid in reply["ids"]]
        blocks = [data for reply in block_replies for data in reply["blocks"]]
        return Batch(
            list(zip(whole, chunks, strict=True)),
            [
                (idx, cid, base, under, mask, data)
                for (idx, base, under, mask), cid, data in zip(partial, ids, blocks, strict=True)
            ],
            sum(int(r["bytes"]) for r in replies),
        )

    async def _store(
        self,
        queue: asyncio.Queue[Batch | None],
        stats: TransferStats,
        view: str,
        claimed: set[bytes],
        unsynced: dict[str, set[bytes]],
    ) -> None:
        """Store batches; `claimed` holds ids another storer of this pass is already storing.

        The copies are made durable once, for the whole pass, by `run`: a backup node
        writes them back while the next batches arrive instead of waiting on each.
        """
        while (batch := await queue.get()) is not None:
            keyed = await self._parallel(self._key, batch.whole)
            patched = await self._parallel(self._key_patches, batch.partial)
            stats.chunks_read += len(batch.whole) + len(batch.partial)
            stats.bytes_read += batch.plain_bytes
            present = {idx: cid for idx, cid, _data in keyed if cid is not None}
            present.update((idx, cid) for idx, cid, *_rest in patched if cid is not None)
            stats.zero_chunks += len(keyed) + len(patched) - len(present)
            stats.chunk_map.update(present)
            stats.chunk_map.update((idx, None) for idx, _data in batch.whole if idx not in present)
            stats.chunk_map.update(
                (idx, None) for idx, *_rest in batch.partial if idx not in present
            )
            plain = {cid: data for _idx, cid, data in keyed if cid is not None}
            deltas = {pid: blocks for _i, cid, *_stem, pid, blocks in patched if cid is not None}
            contents = (
                {cid for _i, cid, *_rest in patched if cid is not None} - claimed - set(plain)
            )
            unseen = [cid for cid in [*plain, *deltas] if cid not in claimed]
            claimed.update(unseen)
            lacking = await self.cluster.missing([*unseen, *contents])
            for idx, cid, base, under, mask, pid, _blocks in patched:
                if cid is not None and cid in lacking and cid not in claimed:
                    stats.patches[idx] = Patch(base, pid, mask, under)
            wanted = {**plain, **deltas}
            stored = dict(
                await self._parallel(
                    self._encode, [(cid, data) for cid, data in wanted.items() if cid in lacking]
                )
            )
            stats.patched_chunks += sum(1 for idx, *_rest in patched if idx in stats.patches)
            stats.new_chunks += len(stored)
            stats.deduplicated += len(present) - len(stored)
            stats.bytes_stored += sum(len(b) for b in stored.values())
            stats.copies_written += await self.cluster.put(
                stored, {cid: lacking[cid] for cid in stored}, unsynced
            )
            self.progress[view] = stats.bytes_read

    def _key(self, batch: list[tuple[int, bytes]]) -> list[tuple[int, bytes | None, bytes]]:
        return [
            (idx, None if is_zero(data) else self.codec.chunk_id(data), data) for idx, data in batch
        ]

    def _key_patches(
        self, batch: list[tuple[int, bytes | None, bytes | None, tuple[Layer, ...], int, bytes]]
    ) -> list[tuple[int, bytes | None, bytes | None, tuple[Layer, ...], int, bytes, bytes]]:
        return [
            (idx, cid, base, under, mask, self.codec.chunk_id(blocks), blocks)
            for idx, cid, base, under, mask, blocks in batch
        ]

    def _encode(self, plain: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [(cid, self.codec.encode(data, cid)) for cid, data in plain]

    async def _parallel(self, work: Callable[[list[A]], list[B]], items: list[A]) -> list[B]:
        """Split `items` over the worker threads (BLAKE3 and zstd release the GIL)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        half = (len(items) + 1) // 2
        parts = await asyncio.gather(
            loop.run_in_executor(self._cpu, work, items[:half]),
            loop.run_in_executor(self._cpu, work, items[half:]),
        )
        return parts[0] + parts[1]


def _plan(parent: Manifest | None, indexes: list[int], masks: list[int | None]) -> list[Planned]:
    """How to read each changed chunk: whole, or as the blocks of a patch.

    A chunk whose blocks written since the parent's base (the parent's patch's and
    these) are more than half of it is read whole. Otherwise only the blocks written
    now are read, as a patch on the parent's chunk or a layer over its patch; a patch
    with no room for a layer is read again as one layer of all its blocks.
    """
    planned: list[Planned] = []
    for idx, written in zip(indexes, masks, strict=True):
        if parent is None or written is None:
            planned.append((idx, None))
            continue
        prior = parent.patches.get(idx)
        covered = written | (prior.covered if prior else 0)
        if covered.bit_count() * 2 > block_count(parent.chunk_length(idx)):
            planned.append((idx, None))
        elif prior is None:
            planned.append((idx, (parent.chunk_map.get(idx), (), written)))
        elif len(prior.layers) < MAX_LAYERS:
            planned.append((idx, (prior.base, prior.layers, written)))
        else:
            planned.append((idx, (prior.base, (), covered)))
    return planned


def _batches(
    planned: list[Planned],
) -> list[tuple[list[int], list[PatchRead]]]:
    """Planned chunks in batches of at most `BATCH` whole chunks and `PATCH_BATCH` patches.

    A patch's blocks are small, so a batch carries more of them: an incremental snapshot
    takes fewer round trips to the business node and the backup cluster.
    """
    batches: list[tuple[list[int], list[PatchRead]]] = []
    whole: list[int] = []
    partial: list[PatchRead] = []
    for idx, patch in planned:
        if len(whole) == BATCH or len(partial) == PATCH_BATCH:
            batches.append((whole, partial))
            whole, partial = [], []
        if patch is None:
            whole.append(idx)
        else:
            partial.append((idx, *patch))
    if whole or partial:
        batches.append((whole, partial))
    return batches


def _block_calls(
    partial: list[PatchRead],
) -> list[list[PatchRead]]:
    """Patched chunks in calls of at most `BLOCK_CALL` chunks and `BLOCK_CALL_BYTES` of blocks."""
    calls: list[list[PatchRead]] = []
    size = 0
    for item in partial:
        wanted = item[-1].bit_count() * BLOCK
        if not calls or len(calls[-1]) == BLOCK_CALL or size + wanted > BLOCK_CALL_BYTES:
            calls.append([])
            size = 0
        calls[-1].append(item)
        size += wanted
    return calls
