"""How the transfer pipeline plans changed chunks and groups them into batches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodes.block_masks import BLOCK
from nodes.manifest import Manifest
from nodes.patches import MAX_LAYERS, Patch
from nodes.pipeline import (
    BATCH,
    BLOCK_CALL,
    BLOCK_CALL_BYTES,
    PATCH_BATCH,
    PatchRead,
    Planned,
    _batches,
    _block_calls,
    _plan,
)

CHUNK = 16 * BLOCK


@given(st.lists(st.booleans(), max_size=3 * PATCH_BATCH))
def test_batches_hold_every_chunk_once_in_order_and_are_full_but_the_last(
    patched: list[bool],
) -> None:
    planned: list[Planned] = [
        (idx, (b"base", (), 1) if is_patch else None) for idx, is_patch in enumerate(patched)
    ]
    batches = _batches(planned)
    seen: list[int] = []
    for whole, partial in batches:
        assert whole or partial
        assert len(whole) <= BATCH and len(partial) <= PATCH_BATCH
        assert all(base == b"base" and mask == 1 for _idx, base, _under, mask in partial)
        seen += sorted(whole + [idx for idx, *_stem in partial])
    assert seen == list(range(len(patched)))
    # No batch but the last is cut short: each is full of whole chunks or of patches.
    assert all(len(w) == BATCH or len(p) == PATCH_BATCH for w, p in batches[:-1])


@given(st.lists(st.integers(min_value=1, max_value=(1 << 8) - 1), max_size=4 * BLOCK_CALL))
def test_block_reads_are_split_so_each_answer_fits_its_limits(masks: list[int]) -> None:
    partial: list[PatchRead] = [(i, None, (), m) for i, m in enumerate(masks)]
    calls = _block_calls(partial)
    assert [item for call in calls for item in call] == partial
    sizes = [sum(mask.bit_count() * BLOCK for *_stem, mask in call) for call in calls]
    assert all(0 < len(call) <= BLOCK_CALL for call in calls)
    assert all(size <= BLOCK_CALL_BYTES for size in sizes)
    # A call ends early only when the next chunk's blocks would not fit in it.
    for call, size, following in zip(calls, sizes, calls[1:], strict=False):
        next_size = following[0][-1].bit_count() * BLOCK
        assert len(call) == BLOCK_CALL or size + next_size > BLOCK_CALL_BYTES


def _parent(patches: dict[int, Patch]) -> Manifest:
    entries = tuple((i, bytes([i]) * 32) for i in range(4))
    return Manifest("p", "vm", "root", 4 * CHUNK, CHUNK, None, entries, patches)


def test_a_chunk_patched_again_reads_only_the_blocks_written_since_as_a_new_layer() -> None:
    under = Patch(b"b" * 32, b"d" * 32, 0b1)
    parent = _parent({1: under})
    planned = _plan(parent, [0, 1, 3], [0b10, 0b100, 0xFF80])
    assert planned == [
        (0, (bytes([0]) * 32, (), 0b10)),  # a plain chunk: a patch on it
        (1, (b"b" * 32, ((b"d" * 32, 0b1),), 0b100)),  # a patched one: a layer over it
        (3, None),  # more than half of it: whole
    ]


def test_a_patch_with_no_room_for_a_layer_is_read_again_as_one_layer() -> None:
    deep = Patch(b"b" * 32, b"d" * 32, 0b1, tuple((bytes([n]) * 32, 1 << n) for n in range(1, 4)))
    assert len(deep.layers) == MAX_LAYERS
    planned = _plan(_parent({2: deep}), [2], [1 << 5])
    assert planned == [(2, (b"b" * 32, (), 0b101111))]


def test_blocks_covered_since_the_base_past_half_the_chunk_read_it_whole() -> None:
    under = Patch(None, b"d" * 32, 0xFF)  # 8 of 16 blocks: half, still a patch
    assert _plan(_parent({1: under}), [1], [0xFF]) == [(1, (None, ((b"d" * 32, 0xFF),), 0xFF))]
    assert _plan(_parent({1: under}), [1], [0x100]) == [(1, None)]


@given(st.lists(st.integers(min_value=1, max_value=(1 << 16) - 1), min_size=1, max_size=12))
def test_layers_never_exceed_the_limit_and_rebuild_what_was_written(writes: list[int]) -> None:
    """Successive incrementals of one chunk, each writing `mask`: every plan keeps the
    chunk within `MAX_LAYERS` layers, and its layers (over its base) name the newest
    write of every block."""
    parent = _parent({})
    newest: dict[int, int] = {}  # block -> the write that last wrote it
    deltas: dict[bytes, dict[int, int]] = {}  # what each delta holds: block -> write
    for step, mask in enumerate(writes):
        ((_idx, stem),) = _plan(parent, [0], [mask])
        for block in range(16):
            if mask >> block & 1:
                newest[block] = step
        if stem is None:  # stored whole: the chunk starts again from a new plain entry
            parent = _parent({})
            newest = {}
            continue
        base, under, read = stem
        assert read & mask == mask
        delta = bytes([step]) * 32
        deltas[delta] = {b: newest[b] for b in range(16) if read >> b & 1}
        patch = Patch(base, delta, read, under)
        assert len(patch.layers) <= MAX_LAYERS
        assert patch.covered.bit_count() * 2 <= 16
        shown: dict[int, int] = {}
        for layer_delta, _mask in patch.layers:
            shown.update(deltas[layer_delta])
        assert shown == newest
        parent = _parent({0: patch})
