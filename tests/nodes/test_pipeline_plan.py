"""How the transfer pipeline groups changed chunks into batches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodes.pipeline import BATCH, PATCH_BATCH, Planned, _batches


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
