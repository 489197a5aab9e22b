"""A running test network that faults are injected into: arm crash points, kill, restart."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from typer.testing import Result

from cli.main import app
from nodes.crashpoints import CRASH_ENV
from nodes.runfile import RunFile, process_alive
from tests.cli.conftest import Deployment

NODES = ("controller", "business-1", "transfer-1", "backup-1", "backup-2", "backup-3")
SETTLE_TIMEOUT = 60.0


def pid_of(net: Deployment, node: str) -> int | None:
    """The pid of `node` if it runs, else None."""
    run = RunFile.read(net.root / "data" / "run" / f"{node}.json")
    if run is None or not process_alive(run.pid):
        return None
    return run.pid


def stop_node(net: Deployment, node: str) -> None:
    """Stop `node` the orderly way (SIGTERM) and wait until it is gone."""
    pid = pid_of(net, node)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    _reap(pid)


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not stop")


def up(net: Deployment, env: dict[str, str] | None = None) -> None:
    """Start every node that is down, with `env` added to their environment."""
    result: Result = net.runner.invoke(app, ["--config", str(net.config), "up"], env=env)
    assert result.exit_code == 0, result.output
    for pid in [pid_of(net, n) for n in NODES]:
        assert pid is not None


def reap_killed(net: Deployment) -> list[str]:
    """The nodes found dead (killed by a crash point); their zombies are reaped."""
    dead = []
    for node in NODES:
        run = RunFile.read(net.root / "data" / "run" / f"{node}.json")
        if run is None:
            dead.append(node)
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(run.pid, os.WNOHANG)
        if not process_alive(run.pid):
            dead.append(node)
    return dead


def arm_controller(net: Deployment, spec: str) -> int:
    """Restart the controller with ``VMSNAP_CRASH_AT=spec``; its new pid."""
    stop_node(net, "controller")
    up(net, {CRASH_ENV: spec})
    pid = pid_of(net, "controller")
    assert pid is not None
    return pid


def cli_process(net: Deployment, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run vmsnap in its own process (a crash point may kill it); the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(net.config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def wait_for(what: str, ready: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    """Poll `ready` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
