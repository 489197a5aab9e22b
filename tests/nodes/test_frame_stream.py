"""FrameStream reads what asyncio streams read, over a real loopback connection."""

import asyncio
import os
import struct

import pytest

from nodes.wire import encode_frame
from tests.nodes.loopback import read_from_stream_reader, read_over_loopback

BLOB = os.urandom(64 * 1024)


def large(n: int) -> dict[str, object]:
    return {"id": n, "result": {"chunks": [BLOB] * 16, "n": n}}


@pytest.mark.parametrize("piece", [1, 4093, 65536, 1 << 20], ids=["byte", "odd", "64k", "1m"])
def test_small_and_large_frames_in_a_row_arrive_whole_and_in_order(piece: int) -> None:
    messages = [{"n": 0}, large(1), {}, large(2), {"n": 3, "b": b"x" * 300_000}, {"n": 4}]
    if piece == 1:
        messages = [{"n": 0}, {"n": 1, "b": b"y" * 5000}, {}]
    data = b"".join(encode_frame(m) for m in messages)

    frames, error = asyncio.run(read_over_loopback(data, piece=piece))

    assert error is None
    assert frames == messages


def test_many_small_frames_larger_than_the_inbox_together_arrive_in_order() -> None:
    messages = [{"n": i, "pad": b"z" * (i % 700)} for i in range(3000)]

    frames, error = asyncio.run(read_over_loopback(b"".join(map(encode_frame, messages))))

    assert error is None
    assert frames == messages


@pytest.mark.parametrize("pause", [0.0, 0.002], ids=["eager", "lagging"])
def test_bodies_around_the_inbox_half_arrive_whole_behind_a_lagging_reader(pause: float) -> None:
    messages = [{"n": n, "b": b"s" * (128 * 1024 - 40 + n)} for n in range(0, 80, 3)]
    messages += [{"n": n, "b": b"t" * n} for n in range(0, 400_000, 9_001)]

    data = b"".join(map(encode_frame, messages))
    frames, error = asyncio.run(read_over_loopback(data, piece=50_000, pause=pause))

    assert error is None
    assert frames == messages


@pytest.mark.parametrize(
    ("data", "max_frame"),
    [
        (b"", 1 << 20),
        (b"\x00\x00", 1 << 20),
        (struct.pack(">I", 10) + b"\xa0", 1 << 20),
        (encode_frame(large(1))[:-1], 1 << 24),
        (encode_frame({"n": 1}) + struct.pack(">I", 2**32 - 1), 1 << 24),
        (encode_frame(large(1)), 1 << 20),
    ],
    ids=["empty", "cut-header", "cut-small-body", "cut-large-body", "oversized", "over-max"],
)
def test_ends_and_errors_match_an_asyncio_stream_reader(data: bytes, max_frame: int) -> None:
    expected = read_from_stream_reader(data, max_frame)

    assert asyncio.run(read_over_loopback(data, max_frame, piece=100_000)) == expected


def test_a_large_body_that_stalls_is_a_protocol_error() -> None:
    data = encode_frame(large(1))[: 600 * 1024]

    frames, error = asyncio.run(read_over_loopback(data, body_timeout=0.3, close=False))

    assert frames == []
    assert error is not None and "did not arrive within" in error
