"""The controller's clock: the system's, or a manual one that tests and benchmarks move.

Everything that reads the time in the controller (the ledger's event times, the
scheduler) reads it from one `Clock`, so a simulated week passes in no time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ledger.errors import InputError
from ledger.zones import zone

LONGEST_NAP = 60.0


class Clock(Protocol):
    """Reads the time and waits for an instant (or for a wake-up)."""

    def now(self) -> datetime:
        """The current instant, aware, in UTC."""
        ...

    def timestamp(self) -> float:
        """The current instant in Unix seconds."""
        ...

    async def wait(self, until: datetime | None, wakeup: asyncio.Event) -> None:
        """Return by `until` (None: no deadline) or when `wakeup` is set; callers recheck."""
        ...


class SystemClock:
    """The wall clock; waits wake at least once a minute so a clock step is noticed."""

    def now(self) -> datetime:
        """The current instant, aware, in UTC."""
        return datetime.now(UTC)

    def timestamp(self) -> float:
        """The current instant in Unix seconds."""
        return time.time()

    async def wait(self, until: datetime | None, wakeup: asyncio.Event) -> None:
        """Sleep until `until` (at most a minute at a time) or until `wakeup` is set."""
        nap = LONGEST_NAP
        if until is not None:
            nap = min(nap, max(0.0, (until - self.now()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=nap)


class ManualClock:
    """A clock that stands still until `advance` or `set` moves it."""

    def __init__(self, start: datetime) -> None:
        if start.utcoffset() is None:
            raise ValueError("a manual clock starts at an aware instant")
        self._now = start.astimezone(UTC)
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        """The instant the clock was last set to."""
        return self._now

    def timestamp(self) -> float:
        """The instant the clock was last set to, in Unix seconds."""
        return self._now.timestamp()

    def set(self, instant: datetime) -> None:
        """Move the clock to `instant` (never backwards) and wake every waiter."""
        if instant.utcoffset() is None:
            raise ValueError("a manual clock moves to aware instants")
        if instant < self._now:
            raise ValueError(f"a manual clock does not go back ({instant} < {self._now})")
        self._now = instant.astimezone(UTC)
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait(self, until: datetime | None, wakeup: asyncio.Event) -> None:
        """Return when the clock has moved (callers recheck the time) or `wakeup` is set."""
        if until is not None and self._now >= until:
            return
        moved = asyncio.ensure_future(self._moved.wait())
        woken = asyncio.ensure_future(wakeup.wait())
        try:
            await asyncio.wait({moved, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
            woken.cancel()


def local_zone_name() -> str:
    """The machine's IANA time zone: $TZ, the /etc/localtime link, /etc/timezone, else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        target = str(Path("/etc/localtime").readlink())
        candidates.append(target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "")
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    for name in candidates:
        if name:
            with contextlib.suppress(InputError):
                zone(name)
                return name
    return "UTC"
