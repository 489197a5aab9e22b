import asyncio
import datetime
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.errors import ProtocolError
from nodes.wire import MAX_FRAME, decode_body, encode_frame, read_frame


def read_from(
    data: bytes, max_frame: int = MAX_FRAME, *, eof: bool = True
) -> dict[str, Any] | None:
    async def scenario() -> dict[str, Any] | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        async with asyncio.timeout(5):
            return await read_frame(reader, max_frame, body_timeout=0.2)

    return asyncio.run(scenario())


def test_frame_is_a_big_endian_length_then_a_cbor_map() -> None:
    frame = encode_frame({"op": "ping"})

    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert cbor2.loads(frame[4:]) == {"op": "ping"}


def test_frame_round_trips_plain_data() -> None:
    message = {
        "id": 7,
        "args": {"name": "web", "size": 2**64 - 1, "neg": -(2**64), "data": b"\x00\xff" * 100},
        "list": [1.5, True, None, "x", [], {}],
    }

    assert read_from(encode_frame(message)) == message


def test_two_frames_in_a_row_are_read_one_at_a_time() -> None:
    async def scenario() -> list[dict[str, Any] | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_frame({"n": 1}) + encode_frame({"n": 2}))
        reader.feed_eof()
        return [await read_frame(reader) for _ in range(3)]

    assert asyncio.run(scenario()) == [{"n": 1}, {"n": 2}, None]


def test_clean_end_of_stream_before_a_header_reads_as_none() -> None:
    assert read_from(b"") is None


def test_end_of_stream_inside_a_header_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="header"):
        read_from(b"\x00\x00")


def test_truncated_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="ended after 2 of 5"):
        read_from(struct.pack(">I", 5) + b"\xa0\xa0")


def test_oversized_frame_is_refused_from_its_header_without_waiting_for_the_body() -> None:
    with pytest.raises(ProtocolError, match="exceeds the maximum of 1024"):
        read_from(struct.pack(">I", 1025), max_frame=1024, eof=False)


def test_body_that_stalls_after_its_header_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="did not arrive within"):
        read_from(struct.pack(">I", 10) + b"\xa0", eof=False)


def test_encoding_refuses_a_message_larger_than_the_maximum() -> None:
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        encode_frame({"data": b"x" * 2000}, 1024)


@pytest.mark.parametrize(
    "message",
    [
        {"when": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)},
        {"set": {1, 2}},
        {"big": 2**64},
        {"tuple": (1, 2)},
        {1: "non-string key"},
    ],
    ids=["datetime", "set", "bignum", "tuple", "int-key"],
)
def test_encoding_refuses_values_that_are_not_plain_data(message: dict[Any, Any]) -> None:
    with pytest.raises(ProtocolError):
        encode_frame(message)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not valid CBOR"),
        (b"\xff", "not a map"),
        (b"\x61\xff", "not valid CBOR"),
        (b"\xa0\x00", "trailing"),
        (b"\x83\x01\x02\x03", "not a map"),
        (b"\xa1\x01\x02", "keys must be strings"),
        (cbor2.dumps({"t": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)}), "plain data"),
        (cbor2.dumps({"t": cbor2.CBORTag(4000, 1)}), "plain data"),
        (b"\xd8\x1c\xa1\x61a\xd8\x1d\x00", "refers to itself"),
        (b"\xa1\x61a\xc5\x82\x1a\x3b\x9a\xca\x00\x01", "not valid CBOR"),
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "not valid CBOR"),
        (b"\x81" * 100_000, "not valid CBOR"),
    ],
    ids=[
        "empty",
        "break",
        "bad-utf8",
        "trailing",
        "array",
        "int-key",
        "datetime-tag",
        "unknown-tag",
        "cyclic",
        "bigfloat-overflow",
        "huge-declared-length",
        "deep-nesting",
    ],
)
def test_decoding_refuses_bodies_that_are_not_one_plain_map(body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_body(body)


def assert_map_or_protocol_error(body: bytes) -> None:
    try:
        value = decode_body(body)
    except ProtocolError:
        return
    assert isinstance(value, dict)
    assert all(isinstance(key, str) for key in value)


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=256))
def test_decoding_arbitrary_bytes_returns_a_map_or_raises_protocol_error(body: bytes) -> None:
    assert_map_or_protocol_error(body)


@settings(max_examples=400, deadline=None, database=None)
@given(
    st.integers(min_value=0xA0, max_value=0xBF),
    st.lists(st.sampled_from([0x61, 0x78, 0xC0, 0xC1, 0xC4, 0xC5, 0xD8, 0xD9, 0xF9]), max_size=4),
    st.binary(max_size=64),
)
def test_decoding_map_like_bytes_returns_a_map_or_raises_protocol_error(
    head: int, markers: list[int], tail: bytes
) -> None:
    assert_map_or_protocol_error(bytes([head, 0x61, 0x6B, *markers]) + tail)
