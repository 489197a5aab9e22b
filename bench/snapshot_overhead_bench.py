"""Snapshot overhead benchmark: what an empty incremental snapshot costs, step by step.

On `vmsnap up`'s default network, a small VM gets a full snapshot, then
`--rounds` incremental snapshots with nothing written in between. Prints the
median wall seconds of:
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = re.compile(r"snapshot (\w+) of \S+ committed in ([\d.]+) s \((.*)\)")


def timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds of `command`, and its stdout."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


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


def measure(folder: Path, rounds: int) -> dict[str, list[float]]:
    """Run the references and the empty incrementals; every figure, in seconds."""
    vmsnap = [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml")]
    register = ["vm", "register", "small", "--ip", "10.0.0.1", "--disk", "system:root:64M"]
    timed([*vmsnap, *register])
    timed([*vmsnap, "snapshot", "create", "small", "--json"])
    figures: dict[str, list[float]] = {}
    ids = []
    for _ in range(rounds):
        for name, command in (
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("vmsnap --help", [*vmsnap, "--help"]),
            ("vmsnap vm list --json", [*vmsnap, "vm", "list", "--json"]),
        ):
            figures.setdefault(name, []).append(timed(command)[0])
        seconds, output = timed([*vmsnap, "snapshot", "create", "small", "--json"])
        figures.setdefault("snapshot create --json", []).append(seconds)
        ids.append(json.loads(output)["id"])
    logged = workflow_times(folder / "data" / "logs" / "controller.log")
    for snapshot in ids:
        for step, seconds in logged.get(snapshot[:12], {}).items():
            figures.setdefault(f"  {step}", []).append(seconds)
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
    print(f"{'figure':32} {'median s':>9} {'min s':>7}")
    for name, values in figures.items():
        print(f"{name:32} {statistics.median(values):9.3f} {min(values):7.3f}")


if __name__ == "__main__":
    main()
