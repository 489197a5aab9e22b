"""A child manifest's root from its parent's tree equals the root computed from scratch."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.manifest import Manifest
from nodes.patches import Patch

CHUNK = 64 * 1024
CHUNKS = 40


def _id(rng: random.Random) -> bytes:
    return rng.randbytes(32)


def _parent(rng: random.Random) -> Manifest:
    indexes = sorted(rng.sample(range(CHUNKS), 25))
    entries = tuple((i, _id(rng)) for i in indexes)
    return Manifest("s0", "vm", "root", CHUNKS * CHUNK - 100, CHUNK, None, entries)


def _fresh_root(manifest: Manifest) -> bytes:
    return Manifest.decode(manifest.encode()).root()


def test_rewritten_chunks_rehash_from_the_parents_tree() -> None:
    rng = random.Random(1)
    parent = _parent(rng)
    parent.root()
    rewritten = {i: _id(rng) for i, _ in parent.entries[::9]}
    patches = {i: Patch(None, _id(rng), 0b101) for i in list(rewritten)[:2]}

    child = parent.changed("s1", rewritten, patches)

    assert "_derived" in child.__dict__
    assert child.root() == _fresh_root(child)
    assert child.root() != parent.root()


def test_past_an_eighth_of_the_entries_rewritten_the_tree_is_built_whole() -> None:
    rng = random.Random(4)
    parent = _parent(rng)
    parent.root()
    child = parent.changed("s1", {i: _id(rng) for i, _ in parent.entries[::6]})

    assert "_derived" not in child.__dict__
    assert child.root() == _fresh_root(child)


def test_a_chunk_first_written_or_made_a_hole_builds_the_whole_tree() -> None:
    rng = random.Random(2)
    parent = _parent(rng)
    parent.root()
    hole = parent.entries[3][0]
    new = next(i for i in range(CHUNKS) if i not in parent.chunk_map)
    for changes in ({hole: None}, {new: _id(rng)}, {hole: None, new: _id(rng)}):
        child = parent.changed("s1", changes)

        assert "_derived" not in child.__dict__
        assert child.root() == _fresh_root(child)


def test_a_parent_whose_root_was_never_asked_builds_the_childs_tree_whole() -> None:
    rng = random.Random(3)
    parent = _parent(rng)
    child = parent.changed("s1", {parent.entries[0][0]: _id(rng)})

    assert "_derived" not in child.__dict__
    assert child.root() == _fresh_root(child)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), rounds=st.integers(1, 4))
def test_every_generation_of_a_chain_has_the_root_of_its_decoded_copy(
    seed: int, rounds: int
) -> None:
    rng = random.Random(seed)
    manifest = _parent(rng)
    manifest.root()
    for generation in range(1, rounds + 1):
        indexes = rng.sample(range(CHUNKS), rng.randint(0, 6))
        changes: dict[int, bytes | None] = {
            i: None if rng.random() < 0.15 else _id(rng) for i in indexes
        }
        patches = {i: Patch(_id(rng), _id(rng), rng.randint(1, 0xFFFF)) for i in indexes[:2]}
        manifest = manifest.changed(f"s{generation}", changes, patches)

        assert manifest.root() == _fresh_root(manifest)
