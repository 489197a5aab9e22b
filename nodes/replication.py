"""The backup cluster as one replicated chunk store: placement, put, get, repair."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import blake3

from nodes.crashpoints import crash_point
from nodes.errors import ChunkMissing, NodeError, NodeUnreachable
from nodes.peers import Peers
from nodes.runfile import process_alive

PAGE = 4096
GET_BATCH = 64
BATCH_BYTES = 1024 * 1024
"""Bytes of blobs per put frame: a frame that fits the CPU caches encodes and decodes
several times faster per byte than a 4 MiB one."""
LIVE_TTL = 1.0
"""Seconds one reading of which backup nodes run (run files, process ids) is reused."""
Progress = Callable[[int, int], None]


def placement(chunk_id: bytes, nodes: Sequence[str], replicas: int) -> list[str]:
    """Rendezvous hashing: the `replicas` nodes whose hash with the chunk id scores highest.

    Adding or removing a node moves only the chunks it gains or loses, and a
    node replaced under the same name is responsible for the same chunks.
    """
    ranked = sorted(nodes, key=lambda n: blake3.blake3(n.encode() + b"\0" + chunk_id).digest())
    return ranked[::-1][:replicas]


@dataclass
class RepairReport:
    """What a repair found and did."""

    chunks: int = 0
    copies_made: int = 0
    under_replicated: int = 0
    unreachable: list[str] = field(default_factory=list)


class BackupCluster:
    """Client-side view of the backup nodes: every chunk on `replicas` of them."""

    def __init__(self, peers: Peers, nodes: Sequence[str], replicas: int) -> None:
        self.peers = peers
        self.nodes = list(nodes)
        self.replicas = replicas
        self.down: set[str] = set()
        self._running: tuple[float, set[str]] | None = None

    def placement(self, chunk_id: bytes) -> list[str]:
        """The nodes that should hold `chunk_id`."""
        return placement(chunk_id, self.nodes, self.replicas)

    async def missing(self, ids: Sequence[bytes]) -> dict[bytes, list[str]]:
        """For each id, the nodes it should be on (reachable ones first) that lack it."""
        wanted: dict[str, list[bytes]] = defaultdict(list)
        alive = self._live()
        for chunk_id in ids:
            targets = self._targets(chunk_id, alive)
            if len(targets) < self.replicas:
                raise NodeUnreachable(
                    "backup cluster", "-", f"fewer than {self.replicas} backup nodes are up"
                )
            for node in targets:
                wanted[node].append(chunk_id)
        answers = await asyncio.gather(
            *(self.peers.call(n, "chunk.has_many", {"ids": a}) for n, a in wanted.items()),
            return_exceptions=True,
        )
        lacking: dict[bytes, list[str]] = {}
        retry: list[bytes] = []
        for (node, asked), answer in zip(wanted.items(), answers, strict=True):
            if isinstance(answer, NodeUnreachable):
                self.down.add(node)
                retry.extend(asked)
                continue
            if isinstance(answer, BaseException):
                raise answer
            for chunk_id, present in zip(asked, answer["present"], strict=True):
                if not present:
                    lacking.setdefault(chunk_id, []).append(node)
        if retry:
            again = await self.missing(list(dict.fromkeys(retry)))
            for chunk_id, nodes in again.items():
                lacking[chunk_id] = sorted(set(lacking.get(chunk_id, [])) | set(nodes))
        return lacking

    def _targets(self, chunk_id: bytes, alive: set[str]) -> list[str]:
        """Placement order, skipping nodes that are down, so R copies are still made."""
        ranked = placement(chunk_id, self.nodes, len(self.nodes))
        return [n for n in ranked if n in alive][: self.replicas]

    def _live(self) -> set[str]:
        """The backup nodes that run and are not marked down.

        Which nodes run is read at most once per LIVE_TTL: a transfer asks for
        every batch, many times a second; a node that stops meanwhile fails its
        next call and is marked down at once.
        """
        now = time.monotonic()
        if self._running is None or now - self._running[0] > LIVE_TTL:
            self._running = (now, {node for node in self.nodes if self._runs(node)})
        return self._running[1] - self.down

    def _runs(self, node: str) -> bool:
        try:
            run = self.peers.runfile(node)
        except NodeError:
            return False
        return process_alive(run.pid)

    async def put(
        self,
        blobs: dict[bytes, bytes],
        targets: dict[bytes, list[str]],
        unsynced: dict[str, set[bytes]] | None = None,
    ) -> int:
        """Store each blob on its target nodes; return the number of copies written.

        A node that fails mid-way is marked down and its copies go to the next
        live nodes in placement order, once; with fewer live nodes than R the
        put fails. Each node makes its copies durable before it answers, unless
        `unsynced` is given: then the ids written are added to it by node, and
        the copies are durable only after `sync`.
        """
        written, failed = await self._put_round(blobs, targets, unsynced)
        if failed:
            retry: dict[bytes, list[str]] = {}
            alive = self._live()
            for chunk_id, node in failed:
                placed = {n for n in targets[chunk_id] if n != node}
                spare = [n for n in self._targets(chunk_id, alive) if n not in placed]
                if not spare:
                    raise NodeUnreachable(node, "-", "too few backup nodes left for R copies")
                retry.setdefault(chunk_id, []).append(spare[0])
            more, still = await self._put_round(blobs, retry, unsynced)
            if still:
                raise NodeUnreachable(still[0][1], "-", "a second backup node failed during a put")
            written += more
        return written

    async def _put_round(
        self,
        blobs: dict[bytes, bytes],
        targets: dict[bytes, list[str]],
        unsynced: dict[str, set[bytes]] | None,
    ) -> tuple[int, list[tuple[bytes, str]]]:
        per_node: dict[str, list[list[bytes]]] = defaultdict(list)
        for chunk_id, nodes in targets.items():
            for node in nodes:
                per_node[node].append([chunk_id, blobs[chunk_id]])
        if unsynced is not None:
            for node, items in per_node.items():
                unsynced.setdefault(node, set()).update(item[0] for item in items)
        results = await asyncio.gather(
            *(self._put_node(n, items, unsynced is None) for n, items in per_node.items())
        )
        written = sum(count for count, _failed in results)
        failed = [pair for _count, lost in results for pair in lost]
        return written, failed

    async def _put_node(
        self, node: str, items: list[list[bytes]], sync: bool
    ) -> tuple[int, list[tuple[bytes, str]]]:
        written = 0
        for batch in _batches(items):
            try:
                await self.peers.call(node, "chunk.put_many", {"items": batch, "sync": sync})
            except NodeUnreachable:
                self.down.add(node)
                return written, [(item[0], node) for item in items[written:]]
            written += len(batch)
        return written, []

    async def sync(self, written: dict[str, set[bytes]]) -> None:
        """Make the copies put with `unsynced` durable, R of each, before returning.

        Every live node syncs, not only those written: a chunk found there by
        deduplication may be another pass's copy, not yet durable. The chunks
        written to a node that can no longer sync are copied again, durably, from
        a replica just synced to the next live nodes in placement order.
        """
        nodes = sorted(set(written) | self._live())
        answers = await asyncio.gather(
            *(self.peers.call(node, "chunk.sync") for node in nodes), return_exceptions=True
        )
        lost: set[bytes] = set()
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, NodeUnreachable):
                self.down.add(node)
                lost |= written.get(node, set())
            elif isinstance(answer, BaseException):
                raise answer
        if lost:
            lacking = await self.missing(sorted(lost))
            await self.put(await self.get(list(lacking)), lacking)

    async def get(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        """Fetch each chunk from its first reachable replica; fall back to the others."""
        by_node: dict[str, list[bytes]] = defaultdict(list)
        alive = self._live()
        for chunk_id in ids:
            targets = self._targets(chunk_id, alive)
            by_node[targets[0] if targets else self.nodes[0]].append(chunk_id)
        pages = await asyncio.gather(
            *(self._get_node(node, wanted) for node, wanted in by_node.items())
        )
        found: dict[bytes, bytes] = {}
        for page in pages:
            found.update(page)
        for chunk_id in ids:
            if chunk_id not in found:
                found[chunk_id] = await self._get_one(chunk_id)
        return found

    async def _get_node(self, node: str, ids: list[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for start in range(0, len(ids), GET_BATCH):
            batch = ids[start : start + GET_BATCH]
            try:
                answer = await self.peers.call(node, "chunk.get_many", {"ids": batch})
            except NodeError:
                return found
            found.update((c, b) for c, b in zip(batch, answer["blobs"], strict=True) if b)
        return found

    async def _get_one(self, chunk_id: bytes) -> bytes:
        ranked = placement(chunk_id, self.nodes, len(self.nodes))
        for node in ranked:
            try:
                answer = await self.peers.call(node, "chunk.get_many", {"ids": [chunk_id]})
            except NodeError:
                continue
            (blob,) = answer["blobs"]
            if isinstance(blob, bytes):
                return blob
        raise ChunkMissing(chunk_id)

    async def holders(self) -> tuple[dict[bytes, set[str]], list[str]]:
        """Which reachable node holds which chunk; and the unreachable nodes."""
        held: dict[bytes, set[str]] = defaultdict(set)
        unreachable: list[str] = []
        for node in self.nodes:
            try:
                async for chunk_id in self._list(node):
                    held[chunk_id].add(node)
            except NodeError:
                unreachable.append(node)
        return held, unreachable

    async def list_node(self, node: str) -> AsyncIterator[bytes]:
        """Every chunk id `node` holds, in order."""
        async for chunk_id in self._list(node):
            yield chunk_id

    async def _list(self, node: str) -> AsyncIterator[bytes]:
        after = b""
        while True:
            page = await self.peers.call(node, "chunk.list", {"after": after, "limit": PAGE})
            for chunk_id in page["ids"]:
                yield chunk_id
            if not page["more"]:
                return
            after = page["ids"][-1]

    async def repair(self, progress: Progress | None = None) -> RepairReport:
        """Bring every chunk back to R copies on the nodes placement names."""
        held, unreachable = await self.holders()
        report = RepairReport(chunks=len(held), unreachable=unreachable)
        for done, (chunk_id, nodes) in enumerate(sorted(held.items()), start=1):
            wanted = [n for n in self.placement(chunk_id) if n not in unreachable]
            lacking = [n for n in wanted if n not in nodes]
            if lacking:
                report.copies_made += await self._copy(chunk_id, sorted(nodes), lacking)
                crash_point("repair.copied")
            if len(nodes | set(lacking)) < self.replicas:
                report.under_replicated += 1
            if progress is not None:
                progress(done, len(held))
        return report

    async def _copy(self, chunk_id: bytes, sources: list[str], targets: list[str]) -> int:
        for source in sources:
            answer = await self.peers.call(source, "chunk.get_many", {"ids": [chunk_id]})
            (blob,) = answer["blobs"]
            if isinstance(blob, bytes):
                for target in targets:
                    await self.peers.call(target, "chunk.put_many", {"items": [[chunk_id, blob]]})
                return len(targets)
        return 0


def _batches(items: Iterable[list[bytes]]) -> Iterable[list[list[bytes]]]:
    batch: list[list[bytes]] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item[1])
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
