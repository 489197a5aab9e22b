"""Manifests kept on the backup cluster as ordinary chunks, found by one id."""

from __future__ import annotations

from collections import OrderedDict

import cbor2

from nodes.chunks import ChunkCodec
from nodes.errors import ManifestCorrupted
from nodes.manifest import Manifest
from nodes.replication import BackupCluster

PIECE = 4 * 1024 * 1024
CACHED_ENTRIES = 1_000_000


async def put_blobs(cluster: BackupCluster, codec: ChunkCodec, plain: list[bytes]) -> list[bytes]:
    """Store plaintext blobs as chunks on R nodes; return their ids."""
    ids = [codec.chunk_id(p) for p in plain]
    lacking = await cluster.missing(list(dict.fromkeys(ids)))
    stored = {
        cid: codec.encode(p, cid) for cid, p in zip(ids, plain, strict=True) if cid in lacking
    }
    await cluster.put(stored, {cid: lacking[cid] for cid in stored})
    return ids


async def store_manifest(cluster: BackupCluster, codec: ChunkCodec, manifest: Manifest) -> bytes:
    """Store a manifest; return the id of its index chunk.

    The encoded manifest is cut into pieces, each stored as a chunk: the rows of each
    range of chunk indexes (`Manifest.encode_parts`), and the fields between them, each
    cut again at 4 MiB. A range that did not change since the parent is a piece the
    cluster already holds, and is not sent again. The index chunk is canonical CBOR
    ``{"manifest": [piece ids], "length": bytes}``. The pieces and the index go to the
    cluster together, in one round.
    """
    parts = manifest.encode_parts()
    pieces = [part[i : i + PIECE] for part in parts for i in range(0, len(part), PIECE)] or [b""]
    piece_ids = [codec.chunk_id(p) for p in pieces]
    length = sum(len(p) for p in pieces)
    index = cbor2.dumps({"manifest": piece_ids, "length": length}, canonical=True)
    return (await put_blobs(cluster, codec, [*pieces, index]))[-1]


async def manifest_pieces(
    cluster: BackupCluster, codec: ChunkCodec, manifest_id: bytes
) -> list[bytes]:
    """The piece ids a manifest index names."""
    found = await cluster.get([manifest_id])
    try:
        index = cbor2.loads(codec.decode(manifest_id, found[manifest_id]))
        pieces = [bytes(p) for p in index["manifest"]]
    except (cbor2.CBORDecodeError, KeyError, TypeError) as err:
        raise ManifestCorrupted(f"manifest index {manifest_id.hex()} is unreadable") from err
    return pieces


async def load_manifest(cluster: BackupCluster, codec: ChunkCodec, manifest_id: bytes) -> Manifest:
    """Fetch, check and decode a manifest by its index id."""
    pieces = await manifest_pieces(cluster, codec, manifest_id)
    found = await cluster.get(pieces)
    blob = b"".join(codec.decode(p, found[p]) for p in pieces)
    return Manifest.decode(blob)


class ManifestCache:
    """Decoded manifests by id, newest used last, holding at most `limit` entries in all.

    A manifest id names its content, so a cached manifest is what loading it again
    would return: the transfer node keeps the manifests it stored and builds the next
    incremental on its parent without fetching and decoding it.
    """

    def __init__(self, limit: int = CACHED_ENTRIES) -> None:
        self.limit = limit
        self._held: OrderedDict[bytes, Manifest] = OrderedDict()
        self._entries = 0

    def get(self, manifest_id: bytes) -> Manifest | None:
        """The cached manifest, or None."""
        manifest = self._held.get(manifest_id)
        if manifest is not None:
            self._held.move_to_end(manifest_id)
        return manifest

    def put(self, manifest_id: bytes, manifest: Manifest) -> None:
        """Keep `manifest`, dropping the least recently used beyond the limit."""
        if manifest_id in self._held or len(manifest.entries) > self.limit:
            return
        self._held[manifest_id] = manifest
        self._entries += len(manifest.entries)
        while self._entries > self.limit:
            _old_id, old = self._held.popitem(last=False)
            self._entries -= len(old.entries)

    async def load(self, cluster: BackupCluster, codec: ChunkCodec, manifest_id: bytes) -> Manifest:
        """The manifest, from the cache or else fetched, checked and kept."""
        manifest = self.get(manifest_id)
        if manifest is None:
            manifest = await load_manifest(cluster, codec, manifest_id)
            self.put(manifest_id, manifest)
        return manifest
