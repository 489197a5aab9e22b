"""The transfer node: runs the pipeline (`nodes/pipeline.py`), builds manifests, restores disks."""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from typing import Any

from nodes.chunks import ChunkCodec
from nodes.config import Config
from nodes.manifest import Manifest
from nodes.manifest_store import ManifestCache, load_manifest, store_manifest
from nodes.patches import read_chunks
from nodes.peers import Peers, node_names
from nodes.pipeline import BATCH, Pipeline, Source
from nodes.replication import BackupCluster
from nodes.request_args import integer, text
from nodes.server import Handler
from nodes.task_groups import run_all

RESTORE_IN_FLIGHT = 4
"""Batches of chunks a restore compares and writes back at once."""


class Transfer:
    """The transfer node's service: runs pipelines on request."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.peers = Peers(config, name)
        cluster = BackupCluster(self.peers, node_names(config, "backup"), config.topology.replicas)
        codec = ChunkCodec(config.data_key(), config.storage.compression_level)
        self.cluster = cluster
        self.codec = codec
        self.pipeline = Pipeline(self.peers, cluster, codec)
        self.processed = 0
        self.restoring: dict[str, dict[str, int]] = {}
        self.manifests = ManifestCache()

    @classmethod
    async def open(cls, config: Config, name: str) -> Transfer:
        """Create the service."""
        return cls(config, name)

    async def close(self) -> None:
        """Close connections and threads."""
        await self.peers.close()
        self.pipeline.close()

    def handlers(self) -> dict[str, Handler]:
        """The operations this node serves."""
        return {
            "node.status": self.status,
            "transfer.process": self.process,
            "transfer.snapshot": self.snapshot,
            "manifest.get": self.get_manifest,
            "transfer.progress": self.report_progress,
            "transfer.discard": self.discard,
            "transfer.restore": self.restore,
            "transfer.restore_progress": self.restore_progress,
        }

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Role and how many views it processed."""
        return {
            "name": self.name,
            "role": "transfer",
            "pid": os.getpid(),
            "processed": self.processed,
        }

    async def process(self, args: dict[str, Any]) -> dict[str, Any]:
        """Process one frozen view into the backup cluster; return stats and the chunk map."""
        source = Source(
            text(args, "node"), text(args, "vm"), text(args, "resource_id"), text(args, "view")
        )
        since = integer(args, "since") if "since" in args else None
        stats = await self.pipeline.run(source, since)
        self.processed += 1
        result = asdict(stats)
        result["chunk_map"] = [[idx, cid] for idx, cid in sorted(stats.chunk_map.items())]
        return result

    async def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """Turn a frozen view into a target snapshot: chunks, then a manifest, on R nodes.

        With a parent manifest only the chunks changed since the volume's base (or
        generation ``since``, the parent's) are processed and merged into the parent's
        map; without, every written chunk is (a full snapshot).
        """
        source = Source(
            text(args, "node"), text(args, "vm"), text(args, "resource_id"), text(args, "view")
        )
        size, chunk_size = integer(args, "size"), integer(args, "chunk_size")
        parent_id = args.get("parent_manifest")
        parent = None
        if isinstance(parent_id, bytes):
            parent = await self.manifests.load(self.cluster, self.codec, parent_id)
            if (parent.size, parent.chunk_size) != (size, chunk_size):
                parent = None
        since = integer(args, "since") if "since" in args else None
        stats = await self.pipeline.run(source, since if parent else 0, parent)
        snapshot = text(args, "snapshot")
        if parent is not None:
            manifest = parent.changed(snapshot, stats.chunk_map, stats.patches)
        else:
            entries = tuple(sorted((i, c) for i, c in stats.chunk_map.items() if c is not None))
            manifest = Manifest(
                snapshot, source.vm, source.resource_id, size, chunk_size, None, entries
            )
        # The root's hashing runs on a thread while the manifest's copies are sent and synced.
        manifest_id, root = await asyncio.gather(
            store_manifest(self.cluster, self.codec, manifest), asyncio.to_thread(manifest.root)
        )
        self.manifests.put(manifest_id, manifest)
        self.processed += 1
        return {
            "resource_id": source.resource_id,
            "manifest": manifest_id.hex(),
            "root": root.hex(),
            "size": size,
            "chunk_size": chunk_size,
            "chunks": len(manifest.entries),
            "changed_chunks": stats.chunks_read,
            "new_chunks": stats.new_chunks,
            "bytes_read": stats.bytes_read,
            "bytes_stored": stats.bytes_stored,
            "incremental": parent is not None,
        }

    async def report_progress(self, args: dict[str, Any]) -> dict[str, Any]:
        """Bytes read so far for a view being processed (None when it is not)."""
        return {"bytes_read": self.pipeline.progress.get(text(args, "view"))}

    async def restore(self, args: dict[str, Any]) -> dict[str, Any]:
        """Make a live volume equal a manifest: write only the chunks that differ."""
        node, vm, resource_id = text(args, "node"), text(args, "vm"), text(args, "resource_id")
        manifest = await load_manifest(
            self.cluster, self.codec, bytes.fromhex(text(args, "manifest"))
        )
        target = {"vm": vm, "resource_id": resource_id}
        wanted = dict(manifest.entries)
        # Only chunks holding data now or in the snapshot can differ: holes match holes.
        candidates = sorted(set(wanted) | set(await self._allocated(node, target)))
        checked = restored = written = 0
        key = f"{vm}/{resource_id}"
        self.restoring[key] = {"chunks": len(candidates), "checked": 0}
        window = BATCH * RESTORE_IN_FLIGHT
        try:
            for start in range(0, len(candidates), window):
                part = candidates[start : start + window]
                for batch_restored, batch_written in await run_all(
                    self._restore_batch(node, target, manifest, wanted, part[i : i + BATCH])
                    for i in range(0, len(part), BATCH)
                ):
                    restored, written = restored + batch_restored, written + batch_written
                checked += len(part)
                self.restoring[key]["checked"] = checked
        finally:
            self.restoring.pop(key, None)
        await self.peers.call(node, "volume.flush", target)
        return {"chunks_checked": checked, "chunks_restored": restored, "bytes_restored": written}

    async def _restore_batch(
        self,
        node: str,
        target: dict[str, Any],
        manifest: Manifest,
        wanted: dict[int, bytes],
        indexes: list[int],
    ) -> tuple[int, int]:
        """Write back the chunks of `indexes` that differ; how many, and their bytes."""
        live = await self.peers.call_views(node, "volume.chunk_ids", {**target, "indexes": indexes})
        differ = [i for i, cid in zip(indexes, live["ids"], strict=True) if cid != wanted.get(i)]
        present = [i for i in differ if i in wanted]
        fetched = dict(
            zip(
                present,
                await read_chunks(self.cluster.get, self.codec, manifest.wanted(present)),
                strict=True,
            )
        )
        size = manifest.chunk_size
        lengths = [min(size, manifest.size - i * size) for i in differ]
        await run_all(
            self.peers.call(
                node, "volume.write", {**target, "offset": i * size, "data": fetched[i]}
            )
            if i in fetched
            else self.peers.call(
                node, "volume.zero", {**target, "offset": i * size, "length": length}
            )
            for i, length in zip(differ, lengths, strict=True)
        )
        return len(differ), sum(lengths)

    async def restore_progress(self, args: dict[str, Any]) -> dict[str, Any]:
        """How far the restore of a VM disk is (None when none runs)."""
        return {"progress": self.restoring.get(f"{text(args, 'vm')}/{text(args, 'resource_id')}")}

    async def _allocated(self, node: str, target: dict[str, Any]) -> list[int]:
        found: list[int] = []
        start = 0
        while True:
            page = await self.peers.call_views(node, "volume.allocated", {**target, "start": start})
            found.extend(page["indexes"])
            if not page["more"] or not page["indexes"]:
                return found
            start = page["indexes"][-1] + 1

    async def discard(self, args: dict[str, Any]) -> dict[str, Any]:
        """Forget a snapshot: chunks go straight to the backup cluster, so nothing is staged."""
        self.pipeline.progress.pop(text(args, "view"), None)
        return {"staged_bytes": 0}

    async def get_manifest(self, args: dict[str, Any]) -> dict[str, Any]:
        """A stored manifest, decoded (its chunks are not fetched)."""
        manifest_id = bytes.fromhex(text(args, "manifest"))
        manifest = await load_manifest(self.cluster, self.codec, manifest_id)
        return {"manifest": manifest.encode(), "root": manifest.root().hex()}
