"""A manifest's stored form cut at index ranges: the same CBOR, and unchanged ranges reused."""

from __future__ import annotations

import gc
import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.errors import ManifestCorrupted
from nodes.manifest import RANGE, Manifest
from nodes.patches import Patch

CHUNK = 64 * 1024
CHUNKS = 4 * RANGE + 7


def _id(rng: random.Random) -> bytes:
    return rng.randbytes(32)


def _manifest(rng: random.Random, count: int, patched: float) -> Manifest:
    indexes = sorted(rng.sample(range(CHUNKS), count))
    patches = {
        i: Patch(
            rng.choice([None, _id(rng)]),
            _id(rng),
            rng.randint(1, 0xFFFF),
            tuple((_id(rng), rng.randint(1, 0xFFFF)) for _ in range(rng.randint(0, 2))),
        )
        for i in indexes
        if rng.random() < patched
    }
    entries = tuple((i, _id(rng)) for i in indexes)
    parent = rng.choice([None, "p" * 64])
    return Manifest("s" * 64, "vm", "root", CHUNKS * CHUNK - 5, CHUNK, parent, entries, patches)


def _canonical(manifest: Manifest) -> bytes:
    body = manifest._fields()
    body["entries"] = [[i, c] for i, c in manifest.entries]
    if manifest.patches:
        body["patches"] = [p.row(i) for i, p in sorted(manifest.patches.items())]
    return cbor2.dumps(body, canonical=True)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    count=st.sampled_from([0, 1, 23, 24, 300, RANGE, 2 * RANGE + 1]),
    patched=st.sampled_from([0.0, 0.3]),
)
def test_the_parts_joined_are_the_canonical_cbor_of_the_manifest(
    seed: int, count: int, patched: float
) -> None:
    manifest = _manifest(random.Random(seed), count, patched)

    assert manifest.encode() == _canonical(manifest)
    assert Manifest.decode(manifest.encode()) == manifest


def test_each_range_of_indexes_is_a_part_of_its_own() -> None:
    manifest = _manifest(random.Random(1), 3 * RANGE, 0.2)
    ranges = sorted({index // RANGE for index, _id in manifest.entries})
    parts = manifest.encode_parts()
    rows = [cbor2.loads(b"\x9f" + part + b"\xff") for part in parts[1 : 1 + len(ranges)]]

    assert [{index // RANGE for index, _id in found} for found in rows] == [{n} for n in ranges]


def test_a_child_reuses_the_parts_of_the_ranges_it_did_not_change() -> None:
    rng = random.Random(2)
    parent = _manifest(rng, 3 * RANGE, 0.2)
    before = set(parent.encode_parts())
    changed = parent.entries[RANGE + 5][0]

    child = parent.changed("c" * 64, {changed: _id(rng)}, {changed: Patch(None, _id(rng), 3)})
    parts = child.encode_parts()

    assert child.encode() == _canonical(child)
    assert len(set(parts) - before) <= 5  # the changed range's entries and patches, and glue
    assert len(set(parts) & before) >= len(parts) - 5


def test_a_decoded_parent_encodes_its_child_whole_and_alike() -> None:
    rng = random.Random(3)
    parent = Manifest.decode(_manifest(rng, 2 * RANGE, 0.1).encode())
    child = parent.changed("c" * 64, {parent.entries[0][0]: None})

    assert child.encode() == _canonical(child)


def test_decoding_leaves_the_garbage_collector_as_it_found_it() -> None:
    blob = _manifest(random.Random(5), 300, 0.1).encode()
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            Manifest.decode(blob)
            with pytest.raises(ManifestCorrupted):
                Manifest.decode(blob[:-3])

            assert gc.isenabled() == enabled
    finally:
        gc.enable()
