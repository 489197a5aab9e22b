"""Manifests: what a target snapshot of one disk is, and the Merkle root that goes on chain."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, cast

import cbor2

from ledger.merkle import MerkleTree, merkle_root
from nodes.block_masks import full_mask
from nodes.errors import ManifestCorrupted
from nodes.patches import MAX_LAYERS, Layer, Patch, stored_ids

FORMAT = 1
PATCHED_FORMAT = 2
LAYERED_FORMAT = 3
ID_SIZE = 32
RANGE = 4096
"""Chunk indexes whose entries (and patches) are encoded, and stored, as one piece."""
DERIVE_SHARE = 8
"""A child's tree comes from its parent's when at most 1/8 of the entries changed; past
that, rehashing the changed paths costs about as much as the whole tree."""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, and restore it as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class Manifest:
    """One disk of a snapshot: its geometry, its parent, and a sparse map index -> chunk id.

    Encoded as canonical CBOR::

        {"format": 1, "snapshot": hex id, "vm": str, "resource_id": str, "size": int,
         "chunk_size": int, "parent": hex id or null, "entries": [[index, chunk id], ...]}

    Entries are sorted by index; all-zero chunks are holes and have no entry.
    A manifest with patched entries (``nodes/patches.py``) is format 2 and has one
    more field, ``"patches": [[index, base id or b"", delta id, block mask], ...]``,
    sorted by index, each naming an index of the entries; such an entry's chunk id
    is the id of the rebuilt chunk, which is not stored as such. A patch of several
    layers goes on with one more delta id and mask per layer, oldest first, and makes
    the manifest format 3.

    The root is the RFC 6962 Merkle tree hash over the leaves
    ``[header, index(8 bytes BE) || chunk id, ...]``, where the header is the
    canonical CBOR of every field but the entries and patches, and a patched
    entry's leaf goes on with ``|| base id (zeros for none)`` and, for each layer,
    ``|| delta id || mask`` (the mask little-endian, one bit per block, in whole
    bytes): changing any field, any id, any patch, or adding or dropping an entry
    changes the root.

    A manifest keeps its tree once its root is asked for. A child made by `changed` that
    keeps its parent's entry indexes (chunks rewritten, none made a hole or first
    written), with at most 1/8 of them changed, computes its tree from the parent's kept
    one, rehashing only the paths of the changed leaves and the header: the root of an
    incremental snapshot costs what changed, not what the disk holds.
    """

    snapshot: str
    vm: str
    resource_id: str
    size: int
    chunk_size: int
    parent: str | None
    entries: tuple[tuple[int, bytes], ...]
    patches: dict[int, Patch] = field(default_factory=dict)

    def header(self) -> bytes:
        """The canonical CBOR of the fields other than the entries."""
        return cbor2.dumps(self._fields(), canonical=True)

    def _format(self) -> int:
        if any(patch.under for patch in self.patches.values()):
            return LAYERED_FORMAT
        return PATCHED_FORMAT if self.patches else FORMAT

    def _fields(self) -> dict[str, Any]:
        return {
            "format": self._format(),
            "snapshot": self.snapshot,
            "vm": self.vm,
            "resource_id": self.resource_id,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "parent": self.parent,
        }

    def root(self) -> bytes:
        """The Merkle root over the header and every entry."""
        return self.tree.root()

    @cached_property
    @_collector_paused()
    def tree(self) -> MerkleTree:
        """The Merkle tree of the root: from the parent's tree when `changed` allows it."""
        derived = self.__dict__.pop("_derived", None)
        if derived is not None:
            parent_tree, positions, changes = derived
            changed = {0: self.header()}
            chunk_map = self.chunk_map
            for index in changes:
                changed[positions[index] + 1] = self._leaf(index, chunk_map[index])
            return cast(MerkleTree, parent_tree.with_leaves(changed))
        leaves = [self.header()]
        leaves += [self._leaf(index, chunk_id) for index, chunk_id in self.entries]
        return MerkleTree.of(leaves)

    def _leaf(self, index: int, chunk_id: bytes) -> bytes:
        """The leaf of one entry: index, chunk id and, when patched, the patch's fields."""
        leaf = index.to_bytes(8, "big") + chunk_id
        patch = self.patches.get(index)
        if patch is not None:
            leaf += patch.leaf(self.chunk_length(index))
        return leaf

    @cached_property
    def positions(self) -> dict[int, int]:
        """Entry index -> its position among the entries."""
        return {index: position for position, (index, _chunk_id) in enumerate(self.entries)}

    def chunk_length(self, index: int) -> int:
        """Bytes of chunk `index` (the last one may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def encode(self) -> bytes:
        """The stored form."""
        return b"".join(self.encode_parts())

    @_collector_paused()
    def encode_parts(self) -> list[bytes]:
        """The stored form, cut where the entries (and patches) of each `RANGE` indexes start.

        The parts joined are the canonical CBOR of the whole manifest. Every part that
        holds one range's rows is the same bytes in each manifest where those rows are the
        same, so a child's unchanged ranges are pieces its parent already stored; the
        fields between the ranges are parts of their own.
        """
        fields: dict[str, Any] = self._fields()
        fields["entries"] = self._entry_ranges
        if self.patches:
            fields["patches"] = self._patch_ranges
        parts: list[bytes] = []
        glue = bytearray(_head(0xA0, len(fields)))
        for key in sorted(fields, key=_canonical_key):
            glue += cbor2.dumps(key)
            value = fields[key]
            if not isinstance(value, dict):
                glue += cbor2.dumps(value, canonical=True)
                continue
            glue += _head(0x80, sum(count for count, _body in value.values()))
            for _range, (_count, body) in sorted(value.items()):
                parts += [bytes(glue), body]
                glue = bytearray()
        parts.append(bytes(glue))
        return [part for part in parts if part]

    @cached_property
    def _entry_ranges(self) -> dict[int, tuple[int, bytes]]:
        """Range number -> (rows, encoded rows without their array head) of the entries."""
        return self._encoded_ranges("_known_entry_ranges", self.entries, lambda i, c: [i, c])

    @cached_property
    def _patch_ranges(self) -> dict[int, tuple[int, bytes]]:
        """Range number -> (rows, encoded rows without their array head) of the patches."""
        patches = sorted(self.patches.items())
        return self._encoded_ranges("_known_patch_ranges", patches, lambda i, p: p.row(i))

    def _encoded_ranges(
        self,
        held: str,
        items: Iterable[tuple[int, Any]],
        row: Callable[[int, Any], list[Any]],
    ) -> dict[int, tuple[int, bytes]]:
        """Every range of `items` encoded, reusing those `changed` left under `held`."""
        known: dict[int, tuple[int, bytes]] = self.__dict__.pop(held, {})
        rows: dict[int, list[list[Any]]] = {}
        for index, item in items:
            if index // RANGE not in known:
                rows.setdefault(index // RANGE, []).append(row(index, item))
        return known | {number: _rows(found) for number, found in rows.items()}

    @classmethod
    def decode(cls, blob: bytes) -> Manifest:
        """Rebuild and check a manifest; anything malformed is ManifestCorrupted.

        The cyclic garbage collector pauses meanwhile, as in the other bulk operations
        (`changed`, `encode_parts`, `tree`): the millions of small lists and tuples of a
        large manifest hold no cycles, yet their allocation would set off collections that
        walk every object of the process (half of the decoding time otherwise).
        """
        with _collector_paused():
            return cls._decode(blob)

    @classmethod
    def _decode(cls, blob: bytes) -> Manifest:
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
                patches={int(row[0]): Patch.from_row(row[1:]) for row in body.get("patches", [])},
            )
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ManifestCorrupted(f"undecodable manifest: {err}") from err
        expected = manifest._fields()
        fields = {*expected, "entries"} | ({"patches"} if "patches" in body else set())
        if body.get("format") != expected["format"] or set(body) != fields:
            raise ManifestCorrupted("unknown manifest format or fields")
        if "patches" in body and len(body["patches"]) != len(manifest.patches):
            raise ManifestCorrupted(f"manifest {manifest.snapshot}: repeated patch")
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
        for index, patch in self.patches.items():
            full = full_mask(self.chunk_length(index))
            if (
                index not in self.chunk_map
                or len(patch.under) >= MAX_LAYERS
                or (patch.base is not None and len(patch.base) != ID_SIZE)
                or len(patch.delta) != ID_SIZE
                or not 0 < patch.mask <= full
                or (patch.under and not _layers_fit(patch.under, full))
            ):
                raise ManifestCorrupted(f"manifest {self.snapshot}: bad patch {index}")

    @_collector_paused()
    def changed(
        self,
        snapshot: str,
        changes: Mapping[int, bytes | None],
        patches: Mapping[int, Patch] | None = None,
    ) -> Manifest:
        """The child manifest: this map with `changes` applied (None makes a hole).

        A changed index is patched in the child when `patches` names it, plain otherwise.
        """
        merged = dict(self.entries)
        patched = dict(self.patches)
        for index, chunk_id in changes.items():
            patched.pop(index, None)
            if chunk_id is None:
                merged.pop(index, None)
            else:
                merged[index] = chunk_id
        for index, patch in (patches or {}).items():
            if changes.get(index) is not None:
                patched[index] = patch
        child = replace(
            self,
            snapshot=snapshot,
            parent=self.snapshot,
            entries=tuple(sorted(merged.items())),
            patches=patched,
        )
        dirty = {index // RANGE for index in changes}
        for name in ("_entry_ranges", "_patch_ranges"):
            encoded = self.__dict__.get(name)
            if encoded is not None:
                kept = {n: rows for n, rows in encoded.items() if n not in dirty}
                child.__dict__[f"_known{name}"] = kept
        held = self.__dict__.get("tree")
        few = len(changes) * DERIVE_SHARE <= len(self.entries)
        if held is not None and few and len(child.entries) == len(self.entries):
            # The same number of entries, each changed index already one: same positions.
            positions = self.positions
            if all(index in positions for index in changes):
                child.__dict__["positions"] = positions
                child.__dict__["_derived"] = (held, positions, list(changes))
        return child

    def chunk_ids(self) -> set[bytes]:
        """Every stored chunk the manifest references (a patched entry's base and delta)."""
        return stored_ids(self.chunk_map, self.patches)

    @cached_property
    def chunk_map(self) -> dict[int, bytes]:
        """Index -> chunk id of every entry."""
        return dict(self.entries)

    def wanted(self, indexes: list[int]) -> list[tuple[bytes, Patch | None, int]]:
        """What `nodes.patches.read_chunks` needs to read the entries at `indexes`."""
        ids = self.chunk_map
        return [(ids[i], self.patches.get(i), self.chunk_length(i)) for i in indexes]

    def stored_size(self) -> int:
        """Bytes of disk data the entries stand for (holes excluded)."""
        return sum(min(self.chunk_size, self.size - i * self.chunk_size) for i, _ in self.entries)


def _head(major: int, count: int) -> bytes:
    """The CBOR head of an array (major 0x80) or map (0xA0) of `count` items."""
    if count < 24:
        return bytes((major | count,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if count < 1 << (8 * size):
            return bytes((major | extra,)) + count.to_bytes(size, "big")
    raise ValueError("too many items")


def _canonical_key(key: str) -> tuple[int, bytes]:
    """Canonical CBOR's order of map keys: shorter encodings first, then bytewise."""
    encoded = cbor2.dumps(key)
    return len(encoded), encoded


def _rows(rows: list[list[Any]]) -> tuple[int, bytes]:
    """How many rows, and their canonical CBOR one after another (an array without its head)."""
    encoded = cbor2.dumps(rows, canonical=True)
    return len(rows), encoded[len(_head(0x80, len(rows))) :]


def _layers_fit(layers: tuple[Layer, ...], full: int) -> bool:
    """Every layer names a whole id and some of a chunk's blocks (`full`: all of them)."""
    return all(len(delta) == ID_SIZE and 0 < mask <= full for delta, mask in layers)


def snapshot_root(disk_roots: Mapping[str, bytes]) -> bytes:
    """A snapshot's root: the Merkle root over its disks' (resource id, root), sorted."""
    leaves = [cbor2.dumps([rid, disk_roots[rid]], canonical=True) for rid in sorted(disk_roots)]
    return merkle_root(leaves)
