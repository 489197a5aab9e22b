"""The controller's clock jumps backwards: nothing runs twice, nothing crashes, the ledger holds.

The business, transfer and backup nodes are real processes; the controller runs in the
test's event loop reading a clock the test steps forwards and backwards (a wall clock
corrected by NTP, or set by hand, does this).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from nodes.clock import ManualClock
from nodes.config import load_config
from nodes.controller import Controller
from tests.cli.conftest import Deployment, make_deployment
from tests.e2e.processes import runfile
from tests.e2e.qemu import qemu_io
from tests.faults.network import up
from tests.faults.tally import TALLY

pytestmark = pytest.mark.slow
UTC = dt.UTC
MiB = 1 << 20


class SteppingClock(ManualClock):
    """A manual clock that, unlike `nodes.clock.ManualClock`, may be set backwards."""

    def set(self, instant: dt.datetime) -> None:
        """Move to `instant`, forwards or backwards, and wake every waiter."""
        self._now = instant.astimezone(UTC)
        self._moved.set()
        self._moved = asyncio.Event()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A running network whose controller process is stopped: the test runs its own."""
    deployment = make_deployment(tmp_path_factory.mktemp("clock") / "deployment")
    up(deployment)
    try:
        pid = int(runfile(deployment.root, "controller")["pid"])
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        yield deployment
    finally:
        deployment.run("down")


@contextlib.asynccontextmanager
async def controller(net: Deployment, clock: SteppingClock) -> AsyncIterator[Controller]:
    opened = await Controller.open(load_config(net.config, {}), clock=clock)
    try:
        await opened.begin()
        yield opened
    finally:
        await opened.close()


async def call(c: Controller, op: str, **args: Any) -> dict[str, Any]:
    return await c.handlers()[op](args)


async def at(c: Controller, clock: SteppingClock, instant: dt.datetime) -> list[dict[str, Any]]:
    """Set the clock, let every run it made due finish; the VM's recorded runs."""
    clock.set(instant)
    await c.scheduler.settle()
    return list((await call(c, "schedule.runs", vm="tick-01"))["runs"])


def test_a_clock_stepping_back_runs_nothing_twice_and_keeps_the_ledger_valid(
    net: Deployment,
) -> None:
    asyncio.run(_clock_steps_back(net))


async def _clock_steps_back(net: Deployment) -> None:
    start = dt.datetime(2027, 3, 1, 0, 30, tzinfo=UTC)
    clock = SteppingClock(start)
    async with controller(net, clock) as c:
        disks = [{"role": "system", "resource_id": "root", "size": 2 * MiB}]
        await call(c, "vm.register", name="tick-01", type="kvm", ip="10.0.9.2", disks=disks)
        url = (await call(c, "disk.locate", vm="tick-01", resource_id="root"))["url"]
        await asyncio.to_thread(qemu_io, url, "write -P 7 0 64k", "flush")
        await call(c, "schedule.set", vm="tick-01", schedule="every 1h", tz="UTC")
        hour = dt.timedelta(hours=1)
        slots = [dt.datetime(2027, 3, 1, h, 0, tzinfo=UTC) for h in (1, 2)]
        for slot in slots:
            taken = await at(c, clock, slot)
        assert [r["slot_ms"] for r in taken] == [int(s.timestamp() * 1000) for s in slots]
        for back in (start, slots[0], slots[0] + hour / 2, slots[1]):
            TALLY.fault("controller clock stepped backwards")
            after = await at(c, clock, back)
            assert after == taken, f"nothing runs again after stepping back to {back}"
            manual = await call(c, "snapshot.create", vm="tick-01")
            assert manual["snapshot"]["status"] == "committed"
        forward = await at(c, clock, slots[1] + hour)
        assert len(forward) == 3 and forward[-1]["slot_ms"] == int(
            (slots[1] + hour).timestamp() * 1000
        )
        report = await call(c, "ledger.verify")
        assert report["ok"] is True and report["projection_matches"] is True
        TALLY.checked("ledger hash chain verifies against the contract head")
        TALLY.checked("projection equals a replay of the chain")
        for snap in await c._run(c.ledger.projection.snapshots, "tick-01", "committed"):
            audit = await call(c, "snapshot.verify", id=snap["id"])
            assert audit["ok"] is True, audit
            TALLY.bytes_verified += int(audit["bytes_checked"])
            TALLY.checked("committed snapshot verifies against its on-chain root")
