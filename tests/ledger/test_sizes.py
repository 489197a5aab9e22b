from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InputError
from ledger.sizes import format_size, parse_size

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("0", 0),
        ("512K", 512 << 10),
        ("10G", 10 << 30),
        ("1.5T", 3 << 39),
        ("20GiB", 20 << 30),
        ("20GB", 20 << 30),
        ("3m", 3 << 20),
        ("2gib", 2 << 30),
        ("0.5K", 512),
        ("1.5 KiB", 1536),
        ("  7 M  ", 7 << 20),
        ("2P", 2 << 50),
        ("100B", 100),
    ],
)
def test_parse_size_reads_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "10Q",
        "",
        "   ",
        "-1",
        "+1",
        "1.3",
        "0.1K",
        "K",
        "1..5K",
        "1,5K",
        ".5K",
        "0x10",
        "1e3",
        "nan",
        "inf",
        "10 GiBs",
        "10 G B",
        "1.0000000000000001K",
    ],
)
def test_parse_size_refuses_with_a_one_line_input_error(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_size(text)

    assert caught.value.message.startswith(f"invalid size {text!r}: ")
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == 2


def test_parse_size_refuses_a_line_break_inside_the_text() -> None:
    with pytest.raises(InputError) as caught:
        parse_size("1\n0G")

    assert "\n" not in caught.value.message


def test_parse_size_is_exact_for_byte_counts_beyond_float_precision() -> None:
    assert parse_size("9007199254740993") == 2**53 + 1


def test_absurdly_long_number_is_refused_or_read_exactly() -> None:
    text = "9" * 400
    try:
        size = parse_size(text)
    except InputError:
        return
    assert size == int(text)


@given(st.integers(min_value=0, max_value=2**64))
def test_parse_size_reads_any_plain_byte_count_exactly(n: int) -> None:
    assert parse_size(str(n)) == n


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(sorted(UNITS)))
def test_parse_size_multiplies_whole_numbers_by_the_unit(count: int, unit: str) -> None:
    assert parse_size(f"{count}{unit}") == count * UNITS[unit]
    assert parse_size(f"{count} {unit}iB") == count * UNITS[unit]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1331, "1.3 KiB"),
        (10 << 30, "10 GiB"),
        (3 << 39, "1.5 TiB"),
        (1 << 50, "1 PiB"),
        (2048 << 50, "2048 PiB"),
    ],
)
def test_format_size_uses_the_largest_unit_with_at_most_one_decimal(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=1, max_value=1023), st.sampled_from(sorted(UNITS)))
def test_format_size_shows_whole_units_without_a_decimal(count: int, unit: str) -> None:
    assert format_size(count * UNITS[unit]) == f"{count} {unit}iB"


@given(st.integers(min_value=0, max_value=2**50).map(lambda n: n * 1024))
def test_format_size_without_a_decimal_point_parses_back_exactly(n: int) -> None:
    shown = format_size(n)
    if "." in shown:
        return
    assert parse_size(shown) == n


@given(st.integers(min_value=0, max_value=1022), st.sampled_from(sorted(UNITS)))
def test_format_size_of_a_half_unit_parses_back_exactly(count: int, unit: str) -> None:
    size = count * UNITS[unit] + UNITS[unit] // 2
    if size < 1024:
        return
    assert parse_size(format_size(size)) == size
