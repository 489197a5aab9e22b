"""Manifests: what a target snapshot of one disk is, and the Merkle root that goes on chain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import cbor2

from ledger.merkle import merkle_root
from nodes.errors import ManifestCorrupted

FORMAT = 1
ID_SIZE = 32


@dataclass(frozen=True)
class Manifest:
    """One disk of a snapshot: its geometry, its parent, and a sparse map index -> chunk id.

    Encoded as canonical CBOR::

        {"format": 1, "snapshot": hex id, "vm": str, "resource_id": str, "size": int,
         "chunk_size": int, "parent": hex id or null, "entries": [[index, chunk id], ...]}

    Entries are sorted by index; all-zero chunks are holes and have no entry.
    The root is the RFC 6962 Merkle tree hash over the leaves
    ``[header, index(8 bytes BE) || chunk id, ...]``, where the header is the
    canonical CBOR of every field but the entries: changing any field, any id,
    or adding or dropping an entry changes the root.
    """

    snapshot: str
    vm: str
    resource_id: str
    size: int
    chunk_size: int
    parent: str | None
    entries: tuple[tuple[int, bytes], ...]

    def header(self) -> bytes:
        """The canonical CBOR of the fields other than the entries."""
        return cbor2.dumps(self._fields(), canonical=True)

    def _fields(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "snapshot": self.snapshot,
            "vm": self.vm,
            "resource_id": self.resource_id,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "parent": self.parent,
        }

    def root(self) -> bytes:
        """The Merkle root over the header and every entry."""
        leaves = [self.header()]
        leaves.extend(index.to_bytes(8, "big") + chunk_id for index, chunk_id in self.entries)
        return merkle_root(leaves)

    def encode(self) -> bytes:
        """The stored form."""
        body = self._fields()
        body["entries"] = [[index, chunk_id] for index, chunk_id in self.entries]
        return cbor2.dumps(body, canonical=True)

    @classmethod
    def decode(cls, blob: bytes) -> Manifest:
        """Rebuild and check a manifest; anything malformed is ManifestCorrupted."""
        try:
            body = cbor2.loads(blob)
            manifest = cls(
                snapshot=body["snapshot"],
                vm=body["vm"],
                resource_id=body["resource_id"],
                size=body["size"],
                chunk_size=body["chunk_size"],
                parent=body["parent"],
                entries=tuple((int(i), bytes(c)) for i, c in body["entries"]),
            )
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as err:
            raise ManifestCorrupted(f"undecodable manifest: {err}") from err
        if body.get("format") != FORMAT or set(body) != {*manifest._fields(), "entries"}:
            raise ManifestCorrupted("unknown manifest format or fields")
        manifest.check()
        return manifest

    def check(self) -> None:
        """Refuse entries out of order, out of range or with malformed ids."""
        chunks = -(-self.size // self.chunk_size) if self.chunk_size > 0 else 0
        last = -1
        for index, chunk_id in self.entries:
            if not last < index < chunks or len(chunk_id) != ID_SIZE:
                raise ManifestCorrupted(f"manifest {self.snapshot}: bad entry {index}")
            last = index

    def changed(self, snapshot: str, changes: Mapping[int, bytes | None]) -> Manifest:
        """The child manifest: this map with `changes` applied (None makes a hole)."""
        merged = dict(self.entries)
        for index, chunk_id in changes.items():
            if chunk_id is None:
                merged.pop(index, None)
            else:
                merged[index] = chunk_id
        return replace(
            self, snapshot=snapshot, parent=self.snapshot, entries=tuple(sorted(merged.items()))
        )

    def chunk_ids(self) -> set[bytes]:
        """Every chunk the manifest references."""
        return {chunk_id for _index, chunk_id in self.entries}

    def stored_size(self) -> int:
        """Bytes of disk data the entries stand for (holes excluded)."""
        return sum(min(self.chunk_size, self.size - i * self.chunk_size) for i, _ in self.entries)


def snapshot_root(disk_roots: Mapping[str, bytes]) -> bytes:
    """A snapshot's root: the Merkle root over its disks' (resource id, root), sorted."""
    leaves = [cbor2.dumps([rid, disk_roots[rid]], canonical=True) for rid in sorted(disk_roots)]
    return merkle_root(leaves)
