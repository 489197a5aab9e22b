"""Checked access to the arguments of a request: a bad one is an InputError, never a crash."""

from __future__ import annotations

from typing import Any

from ledger.errors import InputError


def text(args: dict[str, Any], key: str) -> str:
    """A non-empty string argument."""
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"missing or invalid {key!r}")
    return value


def integer(args: dict[str, Any], key: str, default: int | None = None) -> int:
    """A non-negative integer argument."""
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"missing or invalid {key!r}")
    return value


def blob(args: dict[str, Any], key: str) -> bytes:
    """A bytes argument."""
    value = args.get(key)
    if not isinstance(value, bytes):
        raise InputError(f"missing or invalid {key!r}")
    return value


def maps(args: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A list of maps."""
    value = args.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InputError(f"missing or invalid {key!r}")
    return value


def blobs(args: dict[str, Any], key: str, limit: int) -> list[bytes]:
    """A list of at most `limit` byte strings."""
    value = args.get(key)
    if not isinstance(value, list) or len(value) > limit:
        raise InputError(f"{key!r} must be a list of at most {limit}")
    if not all(isinstance(v, bytes) for v in value):
        raise InputError(f"{key!r} must hold bytes")
    return value
