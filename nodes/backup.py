"""The backup node: a chunk store that the rest of the cluster reaches over the wire."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from ledger.errors import InputError
from nodes.chunk_store import ChunkStore
from nodes.chunks import ChunkCodec
from nodes.config import Config
from nodes.data_key import check_node, fingerprint, record_check
from nodes.errors import ChunkCorrupted, ChunkMissing, StorageFull
from nodes.mirror_service import MirrorService
from nodes.packs import RECORD
from nodes.peers import Peers, node_names
from nodes.replication import BackupCluster
from nodes.request_args import blobs, integer
from nodes.server import Handler

if TYPE_CHECKING:
    from nodes.ledger_replica import LedgerReplica

T = TypeVar("T")
MAX_IDS = 65536
MAX_ITEMS = 4096
ID_SIZE = 32


class Backup:
    """One backup node: its chunk store, used from one worker thread."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        key = config.data_key()
        # The key to record in the node's key check with its first chunk (None: recorded).
        self._unchecked = None if check_node(name, config.node_dir(name), key) else key
        self.store = ChunkStore(config.node_dir(name) / "chunks")
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.peers = Peers(config, name)
        self.replica: LedgerReplica | None = None
        if config.chain.replicas and config.chain.backend == "eth-tester":
            # The EVM and eth-account load only where a replica runs: node start-up stays quick.
            from nodes.ledger_replica import LedgerReplica

            self.replica = LedgerReplica(config, name)
        cluster = BackupCluster(self.peers, node_names(config, "backup"), config.topology.replicas)
        codec = ChunkCodec(key, config.storage.compression_level)
        self.mirrors = MirrorService(
            config.node_dir(name) / "mirrors", name, self.peers, cluster, codec, self._local
        )

    @classmethod
    async def open(cls, config: Config, name: str) -> Backup:
        """Open the chunk store; a ledger replica starts catching up from its peers."""
        node = await asyncio.to_thread(cls, config, name)
        if node.replica is not None:
            node.replica.start_catch_up(node.peers)
        return node

    async def close(self) -> None:
        """Sync and close the store, the journals and the connections."""
        await self.peers.close()
        if self.replica is not None:
            self.replica.close()
        self.mirrors.close()
        await self._run(self.store.close)
        self._worker.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _local(self, chunk_id: bytes) -> bytes | None:
        """The copy of a chunk in this node's store, if it holds a sound one."""

        def fetch() -> bytes | None:
            try:
                return self.store.get(chunk_id)
            except (ChunkMissing, ChunkCorrupted):
                return None

        return await self._run(fetch)

    def handlers(self) -> dict[str, Handler]:
        """The operations this node serves."""
        return {
            "node.status": self.status,
            "chunk.has_many": self.has_many,
            "chunk.put_many": self.put_many,
            "chunk.sync": self.sync,
            "chunk.get_many": self.get_many,
            "chunk.delete_many": self.delete_many,
            "chunk.list": self.list_ids,
            "store.scrub": self.scrub,
            "store.compact": self.compact,
            **self.mirrors.handlers(),
            **(self.replica.handlers() if self.replica is not None else {}),
        }

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Role and what the store holds."""
        stats = await self._run(self.store.stats)
        return {"name": self.name, "role": "backup", "pid": os.getpid(), **_plain(stats)}

    async def has_many(self, args: dict[str, Any]) -> dict[str, Any]:
        """Which of the ids this node holds."""
        ids = _ids(args, "ids", MAX_IDS)
        return {"present": await self._run(self.store.has_many, ids)}

    async def put_many(self, args: dict[str, Any]) -> dict[str, Any]:
        """Store [id, blob] pairs durably (``sync`` false: at the next sync); how many were new."""
        items = args.get("items")
        if not isinstance(items, list) or len(items) > MAX_ITEMS:
            raise InputError(f"items must be a list of at most {MAX_ITEMS} [id, blob] pairs")
        sync = args.get("sync", True)
        if not isinstance(sync, bool):
            raise InputError("sync must be true or false")
        pairs: list[tuple[bytes, bytes]] = []
        for item in items:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(v, bytes) for v in item)
            ):
                raise InputError("each item must be [id, blob]")
            if len(item[0]) != ID_SIZE:
                raise InputError("a chunk id is 32 bytes")
            pairs.append((item[0], item[1]))
        if pairs and self._unchecked is not None:
            await self._run(
                record_check, self.config.node_dir(self.name), fingerprint(self._unchecked)
            )
            self._unchecked = None
        stored = await self._run(self._put_within_quota, pairs, sync)
        return {"stored": sum(1 for new in stored if new)}

    async def sync(self, args: dict[str, Any]) -> dict[str, Any]:
        """Make every chunk stored so far durable (after puts with ``sync`` false)."""
        await self._run(self.store.sync)
        return {}

    def _put_within_quota(self, pairs: list[tuple[bytes, bytes]], sync: bool) -> list[bool]:
        """Store the pairs, refusing all of them if the new ones would pass the quota."""
        quota = self.config.storage.quota_bytes
        if quota:
            present = self.store.has_many(chunk_id for chunk_id, _blob in pairs)
            fresh = [b for (_c, b), held in zip(pairs, present, strict=True) if not held]
            incoming = sum(RECORD.size + len(b) for b in fresh)
            used = self.store.stats().pack_bytes
            if incoming and used + incoming > quota:
                raise StorageFull(self.name, used, incoming, quota)
        return self.store.put_many(pairs, sync=sync)

    async def get_many(self, args: dict[str, Any]) -> dict[str, Any]:
        """Blobs by id; None for a missing or damaged copy (a damaged one is quarantined)."""
        ids = _ids(args, "ids", 256)
        return {"blobs": await self._run(self.store.get_many, ids)}

    async def delete_many(self, args: dict[str, Any]) -> dict[str, Any]:
        """Drop chunks from the index (space comes back with compaction)."""
        ids = _ids(args, "ids", MAX_IDS)
        return {"deleted": await self._run(self.store.delete_many, ids)}

    async def list_ids(self, args: dict[str, Any]) -> dict[str, Any]:
        """Chunk ids in order, after `after`, at most `limit`."""
        after = args.get("after", b"")
        if not isinstance(after, bytes):
            raise InputError("after must be bytes")
        limit = min(integer(args, "limit", 4096), MAX_IDS)

        def page() -> list[bytes]:
            return list(itertools.islice(self.store.ids(after), limit))

        ids = await self._run(page)
        return {"ids": ids, "more": len(ids) == limit}

    async def scrub(self, args: dict[str, Any]) -> dict[str, Any]:
        """Re-hash every stored blob; damaged copies are quarantined and listed."""
        report = await self._run(self.store.scrub)
        return _plain(report)

    async def compact(self, args: dict[str, Any]) -> dict[str, Any]:
        """Rewrite mostly-dead packs."""
        return {"reclaimed": await self._run(self.store.compact)}


def _ids(args: dict[str, Any], key: str, limit: int) -> list[bytes]:
    ids = blobs(args, key, limit)
    if any(len(i) != ID_SIZE for i in ids):
        raise InputError("a chunk id is 32 bytes")
    return ids


def _plain(value: Any) -> dict[str, Any]:
    """A report dataclass as wire-ready data (tuples become lists)."""
    body = dataclasses.asdict(value)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}
