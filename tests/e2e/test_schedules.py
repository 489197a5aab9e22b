"""Scheduled snapshots on a real local network, with time driven by an injected clock.

The business, transfer and backup nodes are real processes; the controller runs
in the test's event loop with a `ManualClock`, so eight weeks pass without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ledger.contract import SnapshotStatus
from nodes.clock import ManualClock
from nodes.config import load_config
from nodes.controller import Controller
from nodes.runfile import process_alive
from tests.cli.conftest import Deployment, make_deployment
from tests.e2e.processes import runfile
from tests.e2e.qemu import qemu_io

pytestmark = pytest.mark.slow
BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC
MiB = 1 << 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A running network whose controller process is stopped: the tests run their own."""
    deployment = make_deployment(tmp_path_factory.mktemp("sched") / "deployment")
    deployment.ok("up")
    try:
        pid = int(runfile(deployment.root, "controller")["pid"])
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        assert not process_alive(pid)
        yield deployment
    finally:
        deployment.run("down")


@contextlib.asynccontextmanager
async def controller(net: Deployment, clock: ManualClock) -> AsyncIterator[Controller]:
    """The deployment's controller, in this event loop, reading `clock`."""
    opened = await Controller.open(load_config(net.config, {}), clock=clock)
    try:
        await opened.begin()
        yield opened
    finally:
        await opened.close()


async def call(c: Controller, op: str, **args: Any) -> dict[str, Any]:
    return await c.handlers()[op](args)


async def register(c: Controller, vm: str) -> str:
    disks = [{"role": "system", "resource_id": "root", "size": 4 * MiB}]
    await call(c, "vm.register", name=vm, type="kvm", ip="10.0.9.1", disks=disks)
    return str((await call(c, "disk.locate", vm=vm, resource_id="root"))["url"])


async def at(c: Controller, clock: ManualClock, instant: dt.datetime) -> None:
    """Move the clock to `instant` and wait until every run it made due has finished."""
    clock.set(instant)
    await c.scheduler.settle()


def ms(instant: dt.datetime) -> int:
    return int(instant.timestamp() * 1000)


async def runs(c: Controller, vm: str) -> list[dict[str, Any]]:
    return list((await call(c, "schedule.runs", vm=vm))["runs"])


async def committed(c: Controller, vm: str) -> list[dict[str, Any]]:
    return list(await c._run(c.ledger.projection.snapshots, vm, "committed"))


async def log(c: Controller, vm: str) -> list[dict[str, Any]]:
    return list((await call(c, "ledger.log", vm=vm))["events"])


def test_weekly_wednesday_over_eight_weeks_keeps_the_newest_three_through_full_deletes(
    net: Deployment,
) -> None:
    asyncio.run(_weekly(net))


async def _weekly(net: Deployment) -> None:
    clock = ManualClock(dt.datetime(2027, 1, 4, 9, 0, tzinfo=BERLIN))
    slots = [
        dt.datetime(2027, 1, 6, 22, 0, tzinfo=BERLIN) + dt.timedelta(weeks=k) for k in range(8)
    ]
    async with controller(net, clock) as c:
        url = await register(c, "wk-01")
        shown = await call(
            c, "schedule.set", vm="wk-01", schedule="wed 22:00", tz="Europe/Berlin", keep_last=3
        )
        assert shown["schedule"]["next_run"] == "2027-01-06T22:00:00+01:00"
        taken: list[str] = []
        for k, slot in enumerate(slots):
            await asyncio.to_thread(qemu_io, url, f"write -P {k + 1} {k * 64}k 64k", "flush")
            await at(c, clock, slot - dt.timedelta(minutes=1))
            assert len(await runs(c, "wk-01")) == k, "nothing runs before the slot"
            await at(c, clock, slot)
            run = (await runs(c, "wk-01"))[-1]
            assert (run["outcome"], run["slot_ms"], run["slots"]) == ("taken", ms(slot), 1)
            taken.append(run["snapshot"])
            live = await committed(c, "wk-01")
            assert [s["id"] for s in live] == taken[-3:], f"after run {k + 1}"
            assert live[-1]["requested_at_ms"] == ms(slot)
        history = await log(c, "wk-01")
        for gone in taken[:5]:
            steps = [e for e in history if e["fields"].get("snapshot") == gone]
            assert [e["type"] for e in steps[-3:]] == [
                "InitialSnapshotDeleted",
                "TargetStagingDeleted",
                "TargetSnapshotDeleted",
            ]
            assert steps[-1]["fields"]["reason"] == (
                "retention (schedule default): beyond keep-last 3"
            )
            deleted_seq = steps[-1]["seq"]
            later = await call(c, "ledger.log")
            assert any(
                e["type"] == "GarbageCollected" and e["seq"] > deleted_seq for e in later["events"]
            ), "garbage was collected after the deletion"
            assert c.ledger.contract.snapshot(bytes.fromhex(gone)).status is SnapshotStatus.RETIRED
        decided = [e for e in history if e["type"] == "RetentionApplied"]
        assert len(decided) == 8
        assert c.ledger.contract.retired("wk-01") == [bytes.fromhex(t) for t in taken[:5]]
        assert c.ledger.contract.live_snapshots("wk-01") == 3
        assert c.ledger.contract.committed_total("wk-01") == 8
        for sid in taken[-3:]:
            assert (await call(c, "snapshot.verify", id=sid))["ok"] is True
        gc = await call(c, "backup.gc")
        assert gc["chunks"] == 0, "retention's collections left no orphan chunk"


def test_every_10d_counts_days_across_a_month_boundary(net: Deployment) -> None:
    asyncio.run(_every_10d(net))


async def _every_10d(net: Deployment) -> None:
    clock = ManualClock(dt.datetime(2027, 1, 24, 0, 0, tzinfo=UTC))
    async with controller(net, clock) as c:
        await register(c, "tend-01")
        await call(
            c,
            "schedule.set",
            vm="tend-01",
            schedule="every 10d 02:00",
            tz="UTC",
            anchor="2027-01-25",
        )
        instant = clock.now()
        while instant < dt.datetime(2027, 3, 8, tzinfo=UTC):
            instant += dt.timedelta(hours=1)
            await at(c, clock, instant)
        expected = [
            dt.datetime(2027, m, d, 2, 0, tzinfo=UTC)
            for m, d in ((1, 25), (2, 4), (2, 14), (2, 24), (3, 6))
        ]
        done = await runs(c, "tend-01")
        assert [r["slot_ms"] for r in done] == [ms(e) for e in expected]
        assert {r["outcome"] for r in done} == {"taken"}


def test_monthly_31_runs_on_the_last_day_of_february(net: Deployment) -> None:
    asyncio.run(_monthly(net))


async def _monthly(net: Deployment) -> None:
    clock = ManualClock(dt.datetime(2027, 1, 30, 12, 0, tzinfo=BERLIN))
    async with controller(net, clock) as c:
        await register(c, "mon-01")
        await call(c, "schedule.set", vm="mon-01", schedule="monthly 31 03:00", tz="Europe/Berlin")
        day = dt.date(2027, 1, 31)
        while day <= dt.date(2027, 4, 30):
            await at(c, clock, dt.datetime.combine(day, dt.time(3, 0), tzinfo=BERLIN))
            day += dt.timedelta(days=1)
        expected = [
            dt.datetime(2027, 1, 31, 3, 0, tzinfo=BERLIN),
            dt.datetime(2027, 2, 28, 3, 0, tzinfo=BERLIN),
            dt.datetime(2027, 3, 31, 3, 0, tzinfo=BERLIN),
            dt.datetime(2027, 4, 30, 3, 0, tzinfo=BERLIN),
        ]
        assert [r["slot_ms"] for r in await runs(c, "mon-01")] == [ms(e) for e in expected]


@pytest.mark.parametrize(
    ("vm", "first_day", "expected_utc"),
    [
        # Spring forward (28 March 2027): 02:30 does not exist and runs once, at 03:30 CEST.
        (
            "dst-spring",
            dt.date(2027, 3, 27),
            ["2027-03-27T01:30", "2027-03-28T01:30", "2027-03-29T00:30"],
        ),
        # Fall back (31 October 2027): 02:30 happens twice and runs once, at the first.
        (
            "dst-autumn",
            dt.date(2027, 10, 30),
            ["2027-10-30T00:30", "2027-10-31T00:30", "2027-11-01T01:30"],
        ),
    ],
)
def test_daylight_saving_changes_in_berlin_run_02_30_exactly_once_a_day(
    net: Deployment, vm: str, first_day: dt.date, expected_utc: list[str]
) -> None:
    asyncio.run(_dst(net, vm, first_day, expected_utc))


async def _dst(net: Deployment, vm: str, first_day: dt.date, expected_utc: list[str]) -> None:
    instant = dt.datetime.combine(first_day, dt.time(0, 0), tzinfo=UTC) - dt.timedelta(hours=2)
    clock = ManualClock(instant)
    async with controller(net, clock) as c:
        await register(c, vm)
        await call(c, "schedule.set", vm=vm, schedule="daily 02:30", tz="Europe/Berlin")
        end = instant + dt.timedelta(days=3)
        while instant < end:
            instant += dt.timedelta(minutes=15)
            await at(c, clock, instant)
        done = await runs(c, vm)
        assert [r["slot_ms"] for r in done] == [
            ms(dt.datetime.fromisoformat(t).replace(tzinfo=UTC)) for t in expected_utc
        ]
        snaps = await committed(c, vm)
        assert [s["requested_at_ms"] for s in snaps] == [r["slot_ms"] for r in done]


def test_missed_runs_after_an_outage_run_once_at_start_up(net: Deployment) -> None:
    asyncio.run(_catch_up(net))


async def _catch_up(net: Deployment) -> None:
    clock = ManualClock(dt.datetime(2027, 6, 1, 0, 0, tzinfo=UTC))
    async with controller(net, clock) as c:
        await register(c, "cat-01")
        await call(c, "schedule.set", vm="cat-01", schedule="daily 03:00", tz="UTC")
        await at(c, clock, dt.datetime(2027, 6, 1, 3, 0, tzinfo=UTC))
    clock.set(dt.datetime(2027, 6, 5, 12, 0, tzinfo=UTC))
    async with controller(net, clock) as c:
        await c.scheduler.settle()
        await at(c, clock, dt.datetime(2027, 6, 6, 3, 0, tzinfo=UTC))
        # The machine sleeps (or the clock steps) while the controller runs: one run again.
        await at(c, clock, dt.datetime(2027, 6, 9, 4, 0, tzinfo=UTC))
        done = await runs(c, "cat-01")
        assert [(r["outcome"], r["slot_ms"], r["slots"]) for r in done] == [
            ("taken", ms(dt.datetime(2027, 6, 1, 3, 0, tzinfo=UTC)), 1),
            ("taken", ms(dt.datetime(2027, 6, 5, 3, 0, tzinfo=UTC)), 4),
            ("taken", ms(dt.datetime(2027, 6, 6, 3, 0, tzinfo=UTC)), 1),
            ("taken", ms(dt.datetime(2027, 6, 9, 3, 0, tzinfo=UTC)), 3),
        ]
        assert len(await committed(c, "cat-01")) == 4
        shown = (await call(c, "schedule.list", vm="cat-01"))["schedules"][0]
        assert shown["next_run"] == "2027-06-10T03:00:00+00:00"


def test_a_run_that_finds_a_snapshot_in_flight_is_skipped_and_recorded(net: Deployment) -> None:
    asyncio.run(_skip(net))


async def _skip(net: Deployment) -> None:
    clock = ManualClock(dt.datetime(2027, 7, 1, 0, 0, tzinfo=UTC))
    async with controller(net, clock) as c:
        await register(c, "busy-01")
        await call(c, "schedule.set", vm="busy-01", schedule="every 6h", tz="UTC")
        in_flight = "f" * 64
        with c.snapshots.activity.claim("busy-01", "snapshot", in_flight):
            await at(c, clock, dt.datetime(2027, 7, 1, 6, 0, tzinfo=UTC))
        await at(c, clock, dt.datetime(2027, 7, 1, 12, 0, tzinfo=UTC))
        done = await runs(c, "busy-01")
        assert [r["outcome"] for r in done] == ["skipped", "taken"]
        assert "snapshot in flight" in done[0]["detail"]
        assert done[0]["snapshot"] is None
        assert len(await committed(c, "busy-01")) == 1
        schedule = (await call(c, "schedule.list", vm="busy-01"))["schedules"][0]
        assert (schedule["taken"], schedule["skipped"]) == (1, 1)
        assert schedule["next_run"] == "2027-07-01T18:00:00+00:00"
