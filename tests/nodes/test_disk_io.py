import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes import disk_io
from nodes.disk_io import _runs

CHUNK = 4


def test_an_image_piece_is_one_request_per_run_of_data_or_zero_chunks() -> None:
    piece = b"abcd" + b"efgh" + bytes(4) + bytes(4) + b"\x00\x01\x00\x00" + bytes(4) + b"xy"
    assert _runs(piece, 100, CHUNK) == [
        (100, b"abcdefgh", 0),
        (108, b"", 8),
        (116, b"\x00\x01\x00\x00", 0),
        (120, b"", 4),
        (124, b"xy", 0),
    ]


def test_a_piece_all_zero_is_one_zeroing_and_a_short_zero_tail_joins_it() -> None:
    assert _runs(bytes(10), 0, CHUNK) == [(0, b"", 10)]
    assert _runs(b"", 0, CHUNK) == []


def test_a_run_of_data_is_cut_at_the_largest_write(monkeypatch) -> None:
    monkeypatch.setattr(disk_io, "WRITE_RUN", 8)
    assert _runs(b"a" * 20, 0, CHUNK) == [(0, b"a" * 8, 0), (8, b"a" * 8, 0), (16, b"a" * 4, 0)]


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(st.sampled_from([b"\x00", b"\x07", b"m"]), max_size=40),
    tail=st.integers(0, CHUNK - 1),
    run=st.sampled_from([CHUNK, 2 * CHUNK, 5 * CHUNK]),
)
def test_the_runs_of_a_piece_rebuild_it_in_order(kinds: list[bytes], tail: int, run: int) -> None:
    piece = b"".join(kind * CHUNK for kind in kinds) + b"t" * tail
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(disk_io, "WRITE_RUN", run)
        runs = _runs(piece, 1000, CHUNK)
    rebuilt = b"".join(data if data else bytes(zeros) for _at, data, zeros in runs)
    assert rebuilt == piece
    lengths = [len(data) or zeros for _at, data, zeros in runs]
    starts = list(itertools.accumulate(lengths, initial=1000))[:-1]
    assert [at for at, _data, _zeros in runs] == starts
    assert all(len(data) <= run for _at, data, _zeros in runs)
    assert all(bool(data) != bool(zeros) for _at, data, zeros in runs)
