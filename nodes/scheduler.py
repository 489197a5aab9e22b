"""The controller's scheduler: periodic snapshots of VMs, each run a ledger event.

The scheduler keeps every schedule's next run in memory and sleeps until the
earliest one (at most a minute at a time with the system clock); a change to a
schedule wakes it. A due run becomes a task that takes the snapshot, records
the run (``ScheduledRun``: taken, skipped or failed), then applies the VM's
retention. At most ``scheduler.parallel`` runs take snapshots at once; a slot
whose schedule still has a run queued or in flight, or whose VM has any
snapshot or rollback in flight, is skipped and recorded as skipped.

After an outage the slots missed since a schedule's last recorded run (or
since it was set) run once, at start-up, as one run that records how many
slots it stands for; the schedule then continues from the next slot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ledger import events
from ledger.contract import Entry
from ledger.errors import VmsnapError
from ledger.rules import has_rules
from ledger.schedule import Schedule, parse_schedule
from ledger.service import Ledger
from nodes.activity import VmBusy
from nodes.clock import Clock
from nodes.retention_run import Retention
from nodes.snapshots import SnapshotFailedError, Snapshots

Runner = Callable[..., Awaitable[Any]]
log = logging.getLogger("vmsnap.scheduler")
TAKEN, SKIPPED, FAILED = "taken", "skipped", "failed"


@dataclass
class Planned:
    """One schedule as the scheduler holds it: parsed, with its next run."""

    vm: str
    name: str
    schedule: Schedule
    next_run: dt.datetime


def from_row(row: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from its projection row (text, zone and anchor)."""
    anchor: dt.date | dt.datetime | None = None
    if row["anchor"]:
        text = str(row["anchor"])
        anchor = dt.datetime.fromisoformat(text) if "T" in text else dt.date.fromisoformat(text)
    return parse_schedule(row["schedule"], row["tz"], anchor)


def anchor_text(schedule: Schedule) -> str | None:
    """The anchor as recorded: an ISO date, or an ISO instant for ``every Nh``."""
    return schedule.anchor.isoformat() if schedule.anchor is not None else None


class Scheduler:
    """Runs every schedule's snapshots at their instants, read from an injectable clock."""

    def __init__(
        self,
        ledger: Ledger,
        snapshots: Snapshots,
        retention: Retention,
        clock: Clock,
        on_ledger: Runner,
        parallel: int = 4,
    ) -> None:
        self.ledger = ledger
        self.snapshots = snapshots
        self.retention = retention
        self.clock = clock
        self._on_ledger = on_ledger
        self._planned: dict[tuple[str, str], Planned] = {}
        self._queued: set[tuple[str, str]] = set()
        self._runs: set[asyncio.Task[None]] = set()
        self._capacity = asyncio.Semaphore(parallel)
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Event()
        self._parked = False
        self._loop: asyncio.Task[None] | None = None
        self.wakeups = 0

    async def start(self) -> None:
        """Load every schedule, run once what an outage missed, and start the loop."""
        rows = await self._on_ledger(self.ledger.projection.schedules, None)
        now = self.clock.now()
        for row in rows:
            schedule = from_row(row)
            since_ms = row["last_slot_ms"] or row["set_at_ms"]
            since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
            missed = schedule.runs_between(since, now) if since < now else []
            key = (row["vm"], row["name"])
            self._planned[key] = Planned(row["vm"], row["name"], schedule, schedule.next_after(now))
            if missed:
                self._fire(key, missed[-1], len(missed))
        self._loop = asyncio.create_task(self._run_loop())

    async def close(self) -> None:
        """Stop the loop and wait for the runs in flight."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await asyncio.gather(*self._runs, return_exceptions=True)

    def plan(self, vm: str, name: str, schedule: Schedule) -> dt.datetime:
        """Add or replace a schedule; return its next run."""
        next_run = schedule.next_after(self.clock.now())
        self._planned[(vm, name)] = Planned(vm, name, schedule, next_run)
        self._wake()
        return next_run

    def unplan(self, vm: str, name: str) -> None:
        """Forget a schedule (a run in flight finishes)."""
        self._planned.pop((vm, name), None)
        self._wake()

    def status(self) -> dict[str, Any]:
        """How many schedules, runs in flight, loop wake-ups so far, and the next run."""
        earliest = min((p.next_run for p in self._planned.values()), default=None)
        return {
            "schedules": len(self._planned),
            "running": len(self._runs),
            "wakeups": self.wakeups,
            "next_run": earliest.isoformat() if earliest else None,
        }

    def next_runs(self) -> dict[tuple[str, str], dt.datetime]:
        """Every schedule's next run."""
        return {key: planned.next_run for key, planned in self._planned.items()}

    async def run_now(self, vm: str, name: str) -> dict[str, Any]:
        """Run a schedule at once (its regular runs are unchanged); return the recorded run."""
        return await self._take((vm, name), self.clock.now(), 0)

    async def settle(self) -> None:
        """Wait until nothing is due and no run is in flight (tests and benchmarks)."""
        while True:
            self._changed.clear()
            due = any(p.next_run <= self.clock.now() for p in self._planned.values())
            if self._parked and not due and not self._runs:
                return
            if self._runs:
                await asyncio.gather(*self._runs, return_exceptions=True)
            else:
                await self._changed.wait()

    def _wake(self) -> None:
        self._wakeup.set()

    def _notify(self) -> None:
        self._changed.set()

    async def _run_loop(self) -> None:
        while True:
            self._wakeup.clear()
            now = self.clock.now()
            for key, planned in list(self._planned.items()):
                if planned.next_run <= now:
                    # Slots passed while the machine slept or the clock jumped run once, as one.
                    late = planned.schedule.runs_between(planned.next_run, now)
                    slots = [planned.next_run, *late]
                    planned.next_run = planned.schedule.next_after(now)
                    self._fire(key, slots[-1], len(slots))
            earliest = min((p.next_run for p in self._planned.values()), default=None)
            self._parked = True
            self._notify()
            try:
                await self.clock.wait(earliest, self._wakeup)
            finally:
                self._parked = False
            self.wakeups += 1

    def _fire(self, key: tuple[str, str], slot: dt.datetime, slots: int) -> None:
        task = asyncio.create_task(self._guarded(key, slot, slots))
        self._runs.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._runs.discard(task)
        self._notify()

    async def _guarded(self, key: tuple[str, str], slot: dt.datetime, slots: int) -> None:
        try:
            await self._take(key, slot, slots)
        except Exception:
            log.exception("schedule %s of %s: the run could not be recorded", key[1], key[0])

    async def _take(self, key: tuple[str, str], slot: dt.datetime, slots: int) -> dict[str, Any]:
        if key in self._queued:
            return await self._record(
                key, slot, slots, SKIPPED, None, "the previous run is still in flight"
            )
        self._queued.add(key)
        try:
            async with self._capacity:
                return await self._snapshot(key, slot, slots)
        finally:
            self._queued.discard(key)

    async def _snapshot(
        self, key: tuple[str, str], slot: dt.datetime, slots: int
    ) -> dict[str, Any]:
        vm, name = key
        try:
            snap = await self.snapshots.create(vm)
        except VmBusy as err:
            return await self._record(key, slot, slots, SKIPPED, None, str(err))
        except SnapshotFailedError as err:
            return await self._record(key, slot, slots, FAILED, err.snapshot, str(err))
        except VmsnapError as err:
            return await self._record(key, slot, slots, FAILED, None, str(err))
        run = await self._record(key, slot, slots, TAKEN, snap["id"], "")
        try:
            run["retention"] = await self._retain(vm)
        except VmsnapError as err:
            log.warning("retention of %s after schedule %s failed: %s", vm, name, err)
            run["retention_error"] = str(err)
        return run

    async def _retain(self, vm: str) -> dict[str, Any] | None:
        schedules = await self._on_ledger(self.ledger.projection.schedules, vm)
        own = await self._on_ledger(self.ledger.projection.retention_policy, vm)
        if own is None and not any(has_rules(s["retention"]) for s in schedules):
            return None
        return await self.retention.apply(vm, dry_run=False)

    async def _record(
        self,
        key: tuple[str, str],
        slot: dt.datetime,
        slots: int,
        outcome: str,
        snapshot: str | None,
        detail: str,
    ) -> dict[str, Any]:
        vm, name = key
        slot_ms = int(slot.timestamp() * 1000)
        event = events.ScheduledRun(
            self.ledger.now_ms(), vm, name, slot_ms, outcome, snapshot, detail[:500], slots
        )
        version = await self._on_ledger(self.ledger.projection.stream_version, events.vm_stream(vm))
        await self._on_ledger(self.ledger.append, [Entry(event, version)])
        log.info("schedule %s of %s at %s: %s %s", name, vm, slot.isoformat(), outcome, detail)
        return events.as_dict(event)
