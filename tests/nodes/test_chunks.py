import os
import struct
import threading

import blake3
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.chunks import ID_SIZE, ChunkCodec, is_zero
from nodes.errors import ChunkCorrupted, NodeError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TEXT = b"the same block of a VM disk, written again and again. " * 1200


@pytest.fixture(params=[None, KEY], ids=["plain", "encrypted"])
def codec(request: pytest.FixtureRequest) -> ChunkCodec:
    return ChunkCodec(request.param)


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=5000), key=st.sampled_from([None, KEY]))
def test_decode_returns_what_was_encoded(plaintext: bytes, key: bytes | None) -> None:
    codec = ChunkCodec(key)
    chunk_id = codec.chunk_id(plaintext)

    assert codec.decode(chunk_id, codec.encode(plaintext)) == plaintext


def test_round_trip_of_large_compressible_and_random_chunks(codec: ChunkCodec) -> None:
    for plaintext in (TEXT, os.urandom(1 << 20), bytes(65536)):
        stored = codec.encode(plaintext)

        assert codec.decode(codec.chunk_id(plaintext), stored) == plaintext


def test_unkeyed_id_is_plain_blake3_of_the_plaintext() -> None:
    assert ChunkCodec().chunk_id(TEXT) == blake3.blake3(TEXT).digest()
    assert len(ChunkCodec(KEY).chunk_id(TEXT)) == ID_SIZE


def test_keyed_ids_differ_from_unkeyed_ids_and_between_keys() -> None:
    ids = {ChunkCodec(key).chunk_id(TEXT) for key in (None, KEY, OTHER_KEY)}

    assert len(ids) == 3


def test_compressible_data_is_stored_compressed_and_random_data_as_is() -> None:
    codec = ChunkCodec()
    random = os.urandom(65536)

    assert len(codec.encode(TEXT)) < len(TEXT) // 10
    assert codec.encode(random) == b"\x10" + random


def test_encrypted_form_hides_the_plaintext_and_costs_28_bytes_at_most() -> None:
    random = os.urandom(65536)
    stored = ChunkCodec(KEY).encode(random)

    assert len(stored) == 1 + len(random) + 12 + 16
    assert random[:64] not in stored
    assert b"the same block" not in ChunkCodec(KEY).encode(TEXT)


def test_the_same_chunk_always_has_the_same_stored_form() -> None:
    assert ChunkCodec(KEY).encode(TEXT) == ChunkCodec(KEY).encode(TEXT)
    assert ChunkCodec().encode(TEXT) == ChunkCodec().encode(TEXT)


def test_nonce_changes_with_the_encrypted_body_even_under_the_same_id() -> None:
    fast, strong = ChunkCodec(KEY, level=1), ChunkCodec(KEY, level=19)
    chunk_id = fast.chunk_id(TEXT)

    one, two = fast.encode(TEXT), strong.encode(TEXT)

    assert one[1:13] != two[1:13]
    assert strong.decode(chunk_id, one) == fast.decode(chunk_id, two) == TEXT


@settings(max_examples=80, deadline=None)
@given(data=st.data(), plaintext=st.sampled_from([TEXT, os.urandom(3000)]), key=st.just(KEY))
def test_any_flipped_byte_of_an_encrypted_chunk_is_detected(
    data: st.DataObject, plaintext: bytes, key: bytes
) -> None:
    codec = ChunkCodec(key)
    stored = bytearray(codec.encode(plaintext))
    position = data.draw(st.integers(0, len(stored) - 1))
    stored[position] ^= data.draw(st.integers(1, 255))

    with pytest.raises(ChunkCorrupted):
        codec.decode(codec.chunk_id(plaintext), bytes(stored))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), plaintext=st.sampled_from([TEXT, os.urandom(3000)]))
def test_a_flipped_byte_of_a_plain_chunk_never_yields_other_data(
    data: st.DataObject, plaintext: bytes
) -> None:
    codec = ChunkCodec()
    stored = bytearray(codec.encode(plaintext))
    position = data.draw(st.integers(0, len(stored) - 1))
    stored[position] ^= data.draw(st.integers(1, 255))

    try:
        decoded = codec.decode(codec.chunk_id(plaintext), bytes(stored))
    except ChunkCorrupted:
        return
    assert decoded == plaintext  # e.g. a larger zstd window: same data, still checked by id


def test_every_flipped_byte_of_an_uncompressed_plain_chunk_is_detected() -> None:
    codec = ChunkCodec()
    plaintext = os.urandom(512)
    stored = codec.encode(plaintext)

    for position in range(len(stored)):
        damaged = bytearray(stored)
        damaged[position] ^= 0x5A
        with pytest.raises(ChunkCorrupted):
            codec.decode(codec.chunk_id(plaintext), bytes(damaged))


@pytest.mark.parametrize("cut", [0, 1, 5, 20])
def test_truncated_stored_form_is_corrupted(codec: ChunkCodec, cut: int) -> None:
    stored = codec.encode(TEXT)

    with pytest.raises(ChunkCorrupted):
        codec.decode(codec.chunk_id(TEXT), stored[:cut])


def test_wrong_id_is_corrupted(codec: ChunkCodec) -> None:
    stored = codec.encode(TEXT)

    with pytest.raises(ChunkCorrupted) as raised:
        codec.decode(codec.chunk_id(b"another chunk"), stored)

    assert isinstance(raised.value, NodeError)
    assert raised.value.chunk_id == codec.chunk_id(b"another chunk")


def test_wrong_key_is_corrupted() -> None:
    stored = ChunkCodec(KEY).encode(TEXT)
    other = ChunkCodec(OTHER_KEY)

    with pytest.raises(ChunkCorrupted, match="authentication failed"):
        other.decode(ChunkCodec(KEY).chunk_id(TEXT), stored)


def test_encrypted_chunk_without_key_and_plain_chunk_with_key_are_refused() -> None:
    with pytest.raises(ChunkCorrupted, match="no key"):
        ChunkCodec().decode(ChunkCodec(KEY).chunk_id(TEXT), ChunkCodec(KEY).encode(TEXT))
    with pytest.raises(ChunkCorrupted, match="requires it"):
        ChunkCodec(KEY).decode(ChunkCodec(KEY).chunk_id(TEXT), ChunkCodec().encode(TEXT))


def test_zstd_bomb_is_refused_from_its_declared_size() -> None:
    bomb = b"\x11" + zstandard.ZstdCompressor().compress(bytes(64 << 20))
    chunk_id = blake3.blake3(bytes(64 << 20)).digest()

    with pytest.raises(ChunkCorrupted, match="declared size"):
        ChunkCodec().decode(chunk_id, bomb)


def test_zstd_frame_that_lies_about_its_size_is_refused() -> None:
    frame = bytearray(zstandard.ZstdCompressor().compress(bytes(64 << 20)))
    offset = 6 if not frame[4] & 0x20 else 5
    assert struct.unpack_from("<I", frame, offset)[0] == 64 << 20
    struct.pack_into("<I", frame, offset, 1000)

    with pytest.raises(ChunkCorrupted, match="bad zstd frame"):
        ChunkCodec().decode(bytes(32), b"\x11" + bytes(frame))


def test_zstd_frame_without_a_declared_size_is_refused() -> None:
    compressor = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = compressor.compress(TEXT) + compressor.flush()

    with pytest.raises(ChunkCorrupted, match="declared size"):
        ChunkCodec().decode(ChunkCodec().chunk_id(TEXT), b"\x11" + frame)


def test_encrypted_chunk_over_the_size_limit_is_refused() -> None:
    codec = ChunkCodec(KEY)
    big = bytes(1 << 20)

    with pytest.raises(ChunkCorrupted):
        codec.decode(codec.chunk_id(big), codec.encode(big), max_size=64 << 10)
    with pytest.raises(ChunkCorrupted):
        random = os.urandom(100_000)
        codec.decode(codec.chunk_id(random), codec.encode(random), max_size=64 << 10)


def test_trailing_bytes_after_the_zstd_frame_are_refused() -> None:
    codec = ChunkCodec()

    with pytest.raises(ChunkCorrupted, match="trailing"):
        codec.decode(codec.chunk_id(TEXT), codec.encode(TEXT) + b"junk")


def test_unknown_format_byte_is_refused() -> None:
    codec = ChunkCodec()
    stored = codec.encode(TEXT)

    with pytest.raises(ChunkCorrupted, match="format byte"):
        codec.decode(codec.chunk_id(TEXT), b"\x20" + stored[1:])


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ChunkCodec(b"short")


def test_is_zero_finds_any_nonzero_byte() -> None:
    assert is_zero(b"")
    assert is_zero(bytes(65536))
    assert ChunkCodec.is_zero(bytes(4096))
    for position in (0, 1, 32767, 65535):
        block = bytearray(65536)
        block[position] = 1
        assert not is_zero(bytes(block))


def test_codec_is_shared_safely_between_threads(codec: ChunkCodec) -> None:
    expected = codec.encode(TEXT)
    results: list[bool] = []

    def work() -> None:
        for _ in range(20):
            stored = codec.encode(TEXT)
            results.append(
                stored == expected and codec.decode(codec.chunk_id(TEXT), stored) == TEXT
            )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [True] * 80
