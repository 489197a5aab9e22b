from nodes.block_masks import (
    BLOCK,
    block_count,
    decode,
    encode,
    full_mask,
    is_mask_of,
    pick_blocks,
    span_mask,
)


def test_a_chunk_has_one_block_per_started_4_kib() -> None:
    assert [block_count(n) for n in (1, 1024, BLOCK, BLOCK + 1, 64 * 1024)] == [1, 1, 1, 2, 16]
    assert full_mask(64 * 1024) == 0xFFFF
    assert full_mask(BLOCK + 1) == 0b11


def test_a_span_covers_every_block_holding_one_of_its_bytes() -> None:
    assert span_mask(0, 1) == 0b1
    assert span_mask(BLOCK - 1, BLOCK + 1) == 0b11
    assert span_mask(BLOCK, 2 * BLOCK) == 0b10
    assert span_mask(4000, 9000) == 0b111
    assert span_mask(0, 64 * 1024) == 0xFFFF


def test_a_mask_of_a_chunk_is_non_zero_and_names_only_its_blocks() -> None:
    assert is_mask_of(1, 1024)
    assert is_mask_of(0b11, BLOCK + 1)
    assert not is_mask_of(0, BLOCK)
    assert not is_mask_of(0b100, BLOCK + 1)
    assert not is_mask_of(-1, BLOCK)
    assert not is_mask_of(True, BLOCK)
    assert not is_mask_of("1", BLOCK)


def test_picked_blocks_are_concatenated_in_order_and_a_short_last_block_stays_short() -> None:
    chunk = b"a" * BLOCK + b"b" * BLOCK + b"c" * 100

    assert pick_blocks(chunk, 0b101) == b"a" * BLOCK + b"c" * 100
    assert pick_blocks(chunk, 0b010) == b"b" * BLOCK
    assert pick_blocks(chunk, 0b111) == chunk


def test_a_stored_mask_reads_back_the_same() -> None:
    for mask in (1, 0xFFFF, 1 << 255 | 1):
        assert decode(encode(mask)) == mask
