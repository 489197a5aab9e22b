"""Byte sizes as people write them: 4096, 512K, 10G, 1.5TiB."""

from __future__ import annotations

import re
from fractions import Fraction

from ledger.errors import InputError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_PATTERN = re.compile(r"\s*(\d{1,30}(?:\.\d{1,30})?)\s*([KMGTP]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Return the number of bytes `text` names (binary units); refuse anything else."""
    match = _PATTERN.fullmatch(text)
    if not match:
        raise InputError(
            f"invalid size {text!r}: use a number with an optional unit K, M, G, T or P"
        )
    number, unit = match.groups()
    value = Fraction(number) * _UNITS[unit.upper()]
    if value.denominator != 1:
        raise InputError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    """Return `size` in the largest binary unit that keeps it readable."""
    for unit in ("P", "T", "G", "M", "K"):
        scale = _UNITS[unit]
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}iB" if value == int(value) else f"{value:.1f} {unit}iB"
    return f"{size} B"
