"""Fuzzing the CBOR frame decoder: anything a peer sends decodes to plain data or is refused."""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from typing import Any

import cbor2
from hypothesis import example, given
from hypothesis import strategies as st

from nodes.errors import ProtocolError
from nodes.wire import decode_body, read_frame
from tests.fuzz.tally import fuzz, ran
from tests.nodes.loopback import read_from_stream_reader, read_over_loopback

SMALL_FRAME = 64 * 1024
MEMORY_SLACK = 8 << 20
"""Decoding may use this much on top of a small multiple of the body's own size."""


def head(major: int, argument: int) -> bytes:
    """The initial bytes of a CBOR item: major type and argument in its shortest form."""
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if argument < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, argument)
    raise ValueError(argument)


LENGTHS = st.one_of(
    st.integers(0, 30), st.sampled_from([2**16, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
)
TAGS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 21, 24, 25, 28, 29, 30, 35, 36, 37, 256, 258, 260, 55799]),
    st.integers(0, 2**64 - 1),
)


def items(depth: int) -> st.SearchStrategy[bytes]:
    """Raw CBOR items, well formed or not: any head, declared lengths that lie, any tag."""
    scalar = st.one_of(
        st.builds(head, st.sampled_from([0, 1]), st.integers(0, 2**64 - 1)),
        st.builds(lambda n, b: head(2, n) + b, LENGTHS, st.binary(max_size=8)),
        st.builds(lambda n, t: head(3, n) + t, LENGTHS, st.binary(max_size=8)),
        st.binary(min_size=1, max_size=9).map(lambda b: bytes([0xE0 | b[0] & 0x1F]) + b[1:]),
        st.sampled_from([b"\x5f", b"\x7f", b"\x9f", b"\xbf", b"\xff", b"\x1c", b"\xfc"]),
    )
    if depth == 0:
        return scalar
    inner = items(depth - 1)
    return st.one_of(
        scalar,
        st.builds(lambda n, xs: head(4, n) + b"".join(xs), LENGTHS, st.lists(inner, max_size=4)),
        st.builds(lambda n, xs: head(5, n) + b"".join(xs), LENGTHS, st.lists(inner, max_size=6)),
        st.builds(lambda t, x: head(6, t) + x, TAGS, inner),
        st.builds(lambda xs: b"\x9f" + b"".join(xs) + b"\xff", st.lists(inner, max_size=4)),
        st.builds(lambda xs: b"\xbf" + b"".join(xs) + b"\xff", st.lists(inner, max_size=6)),
    )


PLAIN = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=4) | st.integers() | st.booleans(), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding of random data (keys of any type) with a cut, flip or insertion."""
    keys = st.text(max_size=4) | st.integers()
    body = cbor2.dumps(draw(st.dictionaries(keys, PLAIN, max_size=4)))
    where = draw(st.integers(0, len(body)))
    match draw(st.sampled_from(["cut", "flip", "insert", "none"])):
        case "cut":
            return body[:where]
        case "flip" if where < len(body):
            flipped = body[where] ^ draw(st.integers(1, 255))
            return body[:where] + bytes([flipped]) + body[where + 1 :]
        case "insert":
            return body[:where] + draw(st.binary(min_size=1, max_size=9)) + body[where:]
    return body


def is_plain(value: Any) -> bool:
    """True for the data a frame may hold: maps, lists, text, bytes, 64-bit ints, floats…"""
    if isinstance(value, bool | float | str | bytes | type(None)):
        return True
    if isinstance(value, int):
        return -(2**64) <= value < 2**64
    if isinstance(value, list):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(is_plain(k) and is_plain(v) for k, v in value.items())
    return False


def decode_within_memory(body: bytes) -> dict[str, Any] | None:
    """decode_body(body), failing the test if it allocates far more than the body's size."""
    tracemalloc.start()
    try:
        try:
            value: dict[str, Any] | None = decode_body(body)
        except ProtocolError:
            value = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 64 * len(body) + MEMORY_SLACK, f"decoding {len(body)} bytes took {peak}"
    return value


def check_decoded(value: dict[str, Any] | None) -> None:
    """A decoded body is a map with text keys holding plain data."""
    if value is not None:
        assert isinstance(value, dict)
        assert all(isinstance(key, str) for key in value)
        assert is_plain(value)


@fuzz(200)
@given(st.binary(max_size=256))
@example(b"\x9b" + struct.pack(">Q", 2**32))  # an array that claims 2**32 items
@example(b"\xbb" + struct.pack(">Q", 2**63))  # a map that claims 2**63 pairs
@example(b"\x5b" + struct.pack(">Q", 2**64 - 1))  # a byte string longer than memory
@example(b"\x81" * 100_000)  # nesting far deeper than the recursion limit
def test_random_bytes_decode_to_plain_data_or_a_protocol_error(body: bytes) -> None:
    ran("wire: random frame bodies")
    check_decoded(decode_within_memory(body))


@fuzz(200)
@given(items(depth=3))
@example(b"\xa1\x61a\xc5\x82\x1b" + struct.pack(">Q", 2**63 - 1) + b"\x01")  # bigfloat 2**huge
@example(b"\xa1\x61a\xd8\x23\x65(a*)*")  # a regular expression
@example(b"\xd8\x1c\xa1\x61a\xd8\x1d\x00")  # a map that contains itself
@example(b"\xa1\x61a\xd9\x01\x02\x80")  # a set
@example(b"\xa1\x61a\xc2\x49" + b"\xff" * 9)  # a bignum beyond 64 bits
def test_crafted_cbor_items_decode_to_plain_data_or_a_protocol_error(body: bytes) -> None:
    ran("wire: crafted CBOR items")
    check_decoded(decode_within_memory(body))


@fuzz(150)
@given(mutated())
def test_damaged_encodings_decode_to_plain_data_or_a_protocol_error(body: bytes) -> None:
    ran("wire: damaged encodings")
    check_decoded(decode_within_memory(body))


def read_stream(data: bytes) -> list[dict[str, Any]]:
    """Every frame read from a stream holding `data`, until the end or a ProtocolError."""

    async def scenario() -> list[dict[str, Any]]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            try:
                while (frame := await read_frame(reader, SMALL_FRAME, body_timeout=1)) is not None:
                    frames.append(frame)
            except ProtocolError:
                pass
        return frames

    return asyncio.run(scenario())


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Frames whose headers may lie about the body's length, one after another."""
    parts = []
    for body in draw(st.lists(st.binary(max_size=64) | items(depth=1), max_size=4)):
        declared = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32 - 1)))
        parts.append(struct.pack(">I", declared) + body)
    return b"".join(parts) + draw(st.binary(max_size=3))


@fuzz(150)
@given(streams())
@example(struct.pack(">I", 2**32 - 1) + b"\xa0")  # a header claiming 4 GiB
@example(struct.pack(">I", 10) + b"\xa0")  # a body cut short
@example(b"\x00\x00")  # a header cut short
def test_a_stream_of_lying_frames_yields_plain_maps_or_a_protocol_error(data: bytes) -> None:
    ran("wire: frame streams")
    for frame in read_stream(data):
        check_decoded(frame)


@fuzz(100)
@given(streams(), st.integers(1, 70))
@example(struct.pack(">I", 10) + b"\xa0", 1)  # a body cut short, one byte at a time
def test_a_frame_stream_connection_reads_what_a_stream_reader_reads(
    data: bytes, piece: int
) -> None:
    ran("wire: frame streams over loopback")
    expected = read_from_stream_reader(data, SMALL_FRAME, body_timeout=1)
    over_loopback = read_over_loopback(data, SMALL_FRAME, piece=piece, body_timeout=1)
    assert asyncio.run(over_loopback) == expected
