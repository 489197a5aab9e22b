"""Time zones by IANA name: the one place a zone name from an operator becomes a ZoneInfo."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.errors import InputError


def zone(name: str) -> ZoneInfo:
    """The zone called `name`; a name the zone database does not hold is an InputError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # zoneinfo looks names up as files: a folder ("America") or an over-long name
        # fails in the file system rather than as an unknown key.
        raise InputError(
            f"unknown time zone {name!r}: use an IANA name like Europe/Berlin"
        ) from None
