"""The Merkle tree kept level by level gives `merkle_root`'s root, before and after changes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import MerkleTree, leaf_hash, merkle_root, node_hash

LEAVES = st.lists(st.binary(max_size=48), max_size=80)


def test_known_roots_of_empty_single_and_three_leaf_trees() -> None:
    assert MerkleTree.of([]).root() == hashlib.sha256(b"").digest()
    assert MerkleTree.of([b"a"]).root() == leaf_hash(b"a")
    three = node_hash(node_hash(leaf_hash(b"a"), leaf_hash(b"b")), leaf_hash(b"c"))
    assert MerkleTree.of([b"a", b"b", b"c"]).root() == three


@settings(max_examples=150, deadline=None)
@given(leaves=LEAVES)
def test_the_tree_has_the_root_of_merkle_root(leaves: list[bytes]) -> None:
    tree = MerkleTree.of(leaves)

    assert tree.root() == merkle_root(leaves)
    assert len(tree) == len(leaves)


@settings(max_examples=150, deadline=None)
@given(
    leaves=LEAVES.filter(bool),
    picks=st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=48)), max_size=10),
)
def test_changed_leaves_give_the_root_of_the_changed_list_and_leave_the_old_tree_alone(
    leaves: list[bytes], picks: list[tuple[int, bytes]]
) -> None:
    tree = MerkleTree.of(leaves)
    changed = {position % len(leaves): data for position, data in picks}
    after = [changed.get(position, leaf) for position, leaf in enumerate(leaves)]

    assert tree.with_leaves(changed).root() == merkle_root(after)
    assert tree.root() == merkle_root(leaves)


def test_a_change_outside_the_tree_is_refused() -> None:
    with pytest.raises(IndexError):
        MerkleTree.of([b"a", b"b"]).with_leaves({2: b"c"})
