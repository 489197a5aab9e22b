"""Scheduler benchmark: next runs for 1,000 schedules, and the controller's cost while idle.

Prints, in one run:
- the time to compute the next run of 1,000 schedules (parse + next run), vmsnap's
  ``ledger.schedule`` against croniter (the reference) on the same 1,000 cron-expressible
  schedules in six time zones, and vmsnap alone on a mix of every form it accepts;
- a real deployment with 1,000 VMs, each with a schedule: controller start-up until its
  scheduler has planned every schedule, ``schedule list`` of all 1,000, and the idle
  controller's CPU (CPU seconds per wall second, from /proc) and scheduler wake-ups over
  a window in which no schedule is due, against the same controller with no schedule.

Each timing is the median of several rounds; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from croniter import croniter

from ledger.events import Disk
from ledger.schedule import parse_schedule
from nodes.api import ControllerApi
from nodes.config import load_config

ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Asia/Kolkata",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_like(i: int) -> tuple[str, str, str]:
    """Schedule i as (vmsnap text, equivalent cron, zone)."""
    hour, minute, zone = i % 24, (7 * i) % 60, ZONES[i % len(ZONES)]
    kind = i % 4
    if kind == 0:
        days = sorted({i % 7, (i + 3) % 7})
        text = f"{','.join(WEEKDAYS[d] for d in days)} {hour:02d}:{minute:02d}"
        cron = f"{minute} {hour} * * {','.join(str((d + 1) % 7) for d in days)}"
    elif kind == 1:
        text, cron = f"daily {hour:02d}:{minute:02d}", f"{minute} {hour} * * *"
    elif kind == 2:
        day = 1 + i % 28
        text, cron = f"monthly {day} {hour:02d}:{minute:02d}", f"{minute} {hour} {day} * *"
    else:
        cron = f"{minute} {hour % 12}/12 * * 1-5"
        text = f"cron {cron}"
    return text, cron, zone


def mixed(i: int) -> tuple[str, str]:
    """Schedule i of every form vmsnap accepts (every 10d and every 6h included)."""
    if i % 6 == 4:
        return f"every {1 + i % 14}d {i % 24:02d}:30", ZONES[i % len(ZONES)]
    if i % 6 == 5:
        return f"every {1 + i % 12}h", ZONES[i % len(ZONES)]
    text, _cron, zone = cron_like(i)
    return text, zone


def next_runs_seconds(n: int, now: dt.datetime) -> dict[str, float]:
    """Seconds to parse and compute the next run of n schedules, vmsnap and croniter."""
    specs = [cron_like(i) for i in range(n)]
    started = time.perf_counter()
    ours = [parse_schedule(t, z, now.date()).next_after(now) for t, _c, z in specs]
    vmsnap = time.perf_counter() - started
    started = time.perf_counter()
    reference = [
        croniter(c, now.astimezone(ZoneInfo(z))).get_next(dt.datetime) for _t, c, z in specs
    ]
    cron_seconds = time.perf_counter() - started
    differ = sum(a != b for a, b in zip(ours, reference, strict=True))
    started = time.perf_counter()
    for i in range(n):
        text, zone = mixed(i)
        parse_schedule(text, zone, now).next_after(now)
    every_form = time.perf_counter() - started
    return {"vmsnap": vmsnap, "croniter": cron_seconds, "mixed": every_form, "differ": differ}


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), *args],
        capture_output=True,
        text=True,
        check=True,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle(api: ControllerApi, pid: int, window: float) -> tuple[float, int]:
    """CPU seconds per wall second and scheduler wake-ups of the controller over `window`."""
    before_wakeups = api.status()["scheduler"]["wakeups"]
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    cpu1, wall1 = cpu_seconds(pid), time.monotonic()
    wakeups = api.status()["scheduler"]["wakeups"] - before_wakeups
    return (cpu1 - cpu0) / (wall1 - wall0), wakeups


def controller_pid(folder: Path) -> int:
    return int(json.loads((folder / "data" / "run" / "controller.json").read_text())["pid"])


def deployment_figures(vms: int, window: float) -> dict[str, float]:
    """Start-up, listing and idle cost of a real controller with `vms` scheduled VMs."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "deployment"
        cli(Path(tmp), "init", "--dir", str(folder))
        cli(folder, "up")
        try:
            api = ControllerApi(load_config(folder / "vmsnap.toml", {}))
            for i in range(vms):
                api.register_vm(f"vm-{i:04d}", "kvm", "10.1.0.1", [Disk("system", "root", 1 << 20)])
            baseline = idle(api, controller_pid(folder), window)
            now = dt.datetime.now(dt.UTC)
            for i in range(vms):
                # Every slot at least two hours away, so none is due while idle is measured.
                at = now + dt.timedelta(hours=2 + i % 20, minutes=i % 60)
                api.set_schedule(
                    {"vm": f"vm-{i:04d}", "schedule": f"daily {at:%H:%M}", "tz": "UTC"}
                )
            cli(folder, "down")
            started = time.monotonic()
            cli(folder, "up")
            while (api.status().get("scheduler") or {}).get("schedules") != vms:
                time.sleep(0.05)
            startup = time.monotonic() - started
            listing = []
            for _ in range(3):
                began = time.monotonic()
                assert len(api.schedules()) == vms
                listing.append(time.monotonic() - began)
            loaded = idle(api, controller_pid(folder), window)
        finally:
            cli(folder, "down")
    return {
        "startup": startup,
        "list": statistics.median(listing),
        "idle_cpu": loaded[0],
        "idle_wakeups": loaded[1],
        "baseline_cpu": baseline[0],
        "baseline_wakeups": baseline[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=30.0, help="idle window, seconds")
    parser.add_argument("--no-deployment", action="store_true", help="skip the real controller")
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC)
    rounds = [next_runs_seconds(args.schedules, now) for _ in range(args.rounds)]
    ours = statistics.median(r["vmsnap"] for r in rounds)
    ref = statistics.median(r["croniter"] for r in rounds)
    every = statistics.median(r["mixed"] for r in rounds)
    print(f"next runs of {args.schedules} schedules (parse + next run, median of {args.rounds}):")
    print(f"  vmsnap ledger.schedule       {ours * 1000:8.1f} ms")
    print(
        f"  croniter (reference)         {ref * 1000:8.1f} ms   vmsnap/croniter {ours / ref:.2f}x"
    )
    print(f"  vmsnap, every form mixed     {every * 1000:8.1f} ms")
    print(f"  next runs that differ from croniter: {rounds[0]['differ']}")
    if args.no_deployment:
        return
    figures = deployment_figures(args.schedules, args.window)
    print(f"a controller with {args.schedules} VMs, each with a schedule:")
    print(f"  start-up until every schedule is planned  {figures['startup']:6.2f} s")
    print(f"  schedule list of all                      {figures['list']:6.2f} s")
    print(
        f"  idle CPU over {args.window:.0f} s: {figures['idle_cpu'] * 100:.2f}% of a core, "
        f"{figures['idle_wakeups']} scheduler wake-ups "
        f"(reference, no schedule: {figures['baseline_cpu'] * 100:.2f}%, "
        f"{figures['baseline_wakeups']} wake-ups)"
    )


if __name__ == "__main__":
    main()
