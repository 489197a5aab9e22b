"""Snapshot overhead benchmark: what an empty incremental snapshot costs, step by step.

On `vmsnap up`'s default network, a small VM gets a full snapshot, then
`--rounds` incremental snapshots with nothing written in between. Prints the
median wall seconds (and the command's own CPU seconds, steadier on a loaded
machine) of:
- `vmsnap snapshot create VM --json` as a user runs it (a new process each time);
- the controller's workflow and each of its steps (from the controller's log,
  when it logs them);
- the references, in the same run: `python -c pass`, `vmsnap --help` and
  `vmsnap vm list --json` (start-up, imports, one round trip to the controller).

The machine may be shared: compare figures taken in the same conditions.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = re.compile(r"snapshot (\w+) of \S+ committed in ([\d.]+) s \((.*)\)")


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of `command` (the process only, not the nodes it calls), its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, done.stdout


def workflow_times(log: Path) -> dict[str, dict[str, float]]:
    """Each logged snapshot's total and step seconds, by snapshot id prefix."""
    found = {}
    for match in STEP.finditer(log.read_text()):
        steps = {"workflow": float(match[2])}
        for part in match[3].split(", "):
            name, seconds = part.rsplit(" ", 1)
            steps[name] = float(seconds)
        found[match[1]] = steps
    return found


def measure(folder: Path, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """Run the references and the empty incrementals: wall and CPU seconds of each figure."""
    vmsnap = [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml")]
    register = ["vm", "register", "small", "--ip", "10.0.0.1", "--disk", "system:root:64M"]
    timed([*vmsnap, *register])
    timed([*vmsnap, "snapshot", "create", "small", "--json"])
    figures: dict[str, tuple[list[float], list[float]]] = {}
    ids = []
    for _ in range(rounds):
        for name, command in (
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("vmsnap --help", [*vmsnap, "--help"]),
            ("vmsnap vm list --json", [*vmsnap, "vm", "list", "--json"]),
            ("snapshot create --json", [*vmsnap, "snapshot", "create", "small", "--json"]),
        ):
            wall, cpu, output = timed(command)
            walls, cpus = figures.setdefault(name, ([], []))
            walls.append(wall)
            cpus.append(cpu)
        ids.append(json.loads(output)["id"])
    logged = workflow_times(folder / "data" / "logs" / "controller.log")
    for snapshot in ids:
        for step, seconds in logged.get(snapshot[:12], {}).items():
            figures.setdefault(f"  {step}", ([], []))[0].append(seconds)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmsnap-overhead-") as work:
        folder = Path(work) / "deployment"
        subprocess.run(
            [sys.executable, "-m", "cli", "init", "--dir", str(folder)],
            check=True,
            capture_output=True,
        )
        config = ["--config", str(folder / "vmsnap.toml")]
        subprocess.run(
            [sys.executable, "-m", "cli", *config, "up"], check=True, capture_output=True
        )
        try:
            figures = measure(folder, args.rounds)
        finally:
            subprocess.run(
                [sys.executable, "-m", "cli", *config, "down"], capture_output=True, check=False
            )
    print(f"empty incremental snapshot of a 64 MiB disk, median of {args.rounds} rounds")
    print(f"{'figure':32} {'median s':>9} {'min s':>7} {'CPU s':>7}")
    for name, (walls, cpus) in figures.items():
        cpu = f"{statistics.median(cpus):7.3f}" if cpus else f"{'':7}"
        print(f"{name:32} {statistics.median(walls):9.3f} {min(walls):7.3f} {cpu}")


if __name__ == "__main__":
    main()
