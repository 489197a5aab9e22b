"""How the transfer pipeline groups changed chunks into batches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodes.block_masks import BLOCK
from nodes.pipeline import (
    BATCH,
    BLOCK_CALL,
    BLOCK_CALL_BYTES,
    PATCH_BATCH,
    PatchRead,
    Planned,
    _batches,
    _block_calls,
)


@given(st.lists(st.booleans(), max_size=3 * PATCH_BATCH))
def test_batches_hold_every_chunk_once_in_order_and_are_full_but_the_last(
    patched: list[bool],
) -> None:
    planned: list[Planned] = [
        (idx, (b"base", 1) if is_patch else None) for idx, is_patch in enumerate(patched)
    ]
    batches = _batches(planned)
    seen: list[int] = []
    for whole, partial in batches:
        assert whole or partial
        assert len(whole) <= BATCH and len(partial) <= PATCH_BATCH
        assert all(base == b"base" and mask == 1 for _idx, base, mask in partial)
        seen += sorted(whole + [idx for idx, _base, _mask in partial])
    assert seen == list(range(len(patched)))
    # No batch but the last is cut short: each is full of whole chunks or of patches.
    assert all(len(w) == BATCH or len(p) == PATCH_BATCH for w, p in batches[:-1])


@given(st.lists(st.integers(min_value=1, max_value=(1 << 8) - 1), max_size=4 * BLOCK_CALL))
def test_block_reads_are_split_so_each_answer_fits_its_limits(masks: list[int]) -> None:
    partial: list[PatchRead] = [(i, None, m) for i, m in enumerate(masks)]
    calls = _block_calls(partial)
    assert [item for call in calls for item in call] == partial
    sizes = [sum(mask.bit_count() * BLOCK for _i, _b, mask in call) for call in calls]
    assert all(0 < len(call) <= BLOCK_CALL for call in calls)
    assert all(size <= BLOCK_CALL_BYTES for size in sizes)
    # A call ends early only when the next chunk's blocks would not fit in it.
    for call, size, following in zip(calls, sizes, calls[1:], strict=False):
        next_size = following[0][2].bit_count() * BLOCK
        assert len(call) == BLOCK_CALL or size + next_size > BLOCK_CALL_BYTES
