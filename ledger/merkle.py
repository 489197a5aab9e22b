"""Merkle trees as RFC 6962 defines them: the roots snapshots and rollbacks put on chain."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping, Sequence

HASH = 32
"""Bytes of a SHA-256 digest: every node of a tree."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of `leaves` (leaf data, not hashes); SHA-256("") when empty."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    for level in _levels(leaves):
        top = level  # each level below is dropped once the next is built
    return top[0]


def _levels(leaves: Sequence[bytes]) -> Iterator[list[bytes]]:
    """The hashes of each level, leaves first: pairs hashed, an odd last node going up."""
    level = [leaf_hash(leaf) for leaf in leaves]
    yield level
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        yield level


class MerkleTree:
    """The tree of `merkle_root`, kept level by level: changing some leaves rehashes their paths.

    Level 0 holds the leaf hashes and each level above the hashes of pairs below it (an
    odd last node goes up as it is), each level as one buffer of 32-byte hashes. A tree
    is never changed in place: `with_leaves` returns a new one.
    """

    def __init__(self, levels: list[bytearray]) -> None:
        self._levels = levels

    @classmethod
    def of(cls, leaves: Sequence[bytes]) -> MerkleTree:
        """The tree over `leaves` (leaf data, not hashes)."""
        return cls([bytearray(b"".join(level)) for level in _levels(leaves)])

    def __len__(self) -> int:
        """The number of leaves."""
        return len(self._levels[0]) // HASH

    def root(self) -> bytes:
        """The Merkle Tree Hash, equal to `merkle_root` of the same leaves."""
        if not self._levels[0]:
            return hashlib.sha256(b"").digest()
        return bytes(self._levels[-1])

    def with_leaves(self, changed: Mapping[int, bytes]) -> MerkleTree:
        """The tree with the leaves at the positions of `changed` replaced by its data."""
        if any(not 0 <= position < len(self) for position in changed):
            raise IndexError("a changed leaf is outside the tree")
        levels = [bytearray(level) for level in self._levels]
        for position, data in changed.items():
            levels[0][position * HASH : (position + 1) * HASH] = leaf_hash(data)
        dirty = set(changed)
        for below, above in itertools.pairwise(levels):
            count = len(below) // HASH
            dirty = {position // 2 for position in dirty}
            for parent in dirty:
                left = 2 * parent
                node = (
                    _pair(below, left)
                    if left + 1 < count
                    else bytes(below[left * HASH : (left + 1) * HASH])
                )
                above[parent * HASH : (parent + 1) * HASH] = node
        return MerkleTree(levels)


def _pair(level: bytearray, left: int) -> bytes:
    """The node over the hashes at `left` and `left + 1` of `level`."""
    return hashlib.sha256(b"\x01" + level[left * HASH : (left + 2) * HASH]).digest()
