"""The local network: start, stop and inspect the node processes of a deployment."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.errors import InputError
from nodes.client import call_sync
from nodes.config import Config
from nodes.errors import NetworkNotRunning, NodeError
from nodes.peers import node_names
from nodes.runfile import RunFile, process_alive

STOP_TIMEOUT = 15.0
PRIVATE_ENV = frozenset({"VMSNAP_PASSPHRASE"})
"""Variables only the CLI reads, never passed on to node processes."""


@dataclass(frozen=True)
class NodeSpec:
    """A node of the topology: its name and role."""

    name: str
    role: str


def topology(config: Config) -> list[NodeSpec]:
    """The nodes a deployment runs: backup nodes first, the controller last."""
    return [
        NodeSpec(name, role)
        for role in ("backup", "transfer", "business", "controller")
        for name in node_names(config, role)
    ]


def up(config: Config, env: Mapping[str, str], only: Sequence[str] = ()) -> list[RunFile]:
    """Start every node (or those named in `only`) that is not running; wait until each has.

    The nodes start all at once.
    """
    specs = topology(config)
    unknown = sorted(set(only) - {spec.name for spec in specs})
    if unknown:
        known = ", ".join(spec.name for spec in specs)
        raise InputError(f"no node named {', '.join(unknown)} in this deployment (nodes: {known})")
    spawned = [
        (spec, _spawn(config, spec, env))
        for spec in specs
        if (not only or spec.name in only) and _alive(config, spec.name) is None
    ]
    started: list[RunFile] = []
    try:
        for spec, pid in spawned:
            started.append(_wait_started(config, spec, pid))
    except NodeError:
        for _spec, pid in spawned:
            _terminate(pid)
        raise
    return started


def down(config: Config) -> list[str]:
    """Stop every running node: the controller first, then the rest together."""
    runs: list[RunFile] = []
    for path in sorted(config.run_dir.glob("*.json")):
        run = RunFile.read(path)
        if run is not None and process_alive(run.pid):
            runs.append(run)
        else:
            path.unlink(missing_ok=True)
    first = [r for r in runs if r.role == "controller"]
    rest = [r for r in runs if r.role != "controller"]
    for group in (first, rest):
        for run in group:
            _signal(run.pid, signal.SIGTERM)
        for run in group:
            _terminate(run.pid)
            (config.run_dir / f"{run.name}.json").unlink(missing_ok=True)
    return [r.name for r in first + rest]


def status(config: Config) -> list[dict[str, Any]]:
    """Every node of the topology: address, process and whether it answers."""
    rows: list[dict[str, Any]] = []
    for spec in topology(config):
        run = RunFile.read(config.run_dir / f"{spec.name}.json")
        row: dict[str, Any] = {
            "name": spec.name,
            "role": spec.role,
            "state": "down",
            "host": None,
            "port": None,
            "pid": None,
            "detail": {},
        }
        if run is not None and process_alive(run.pid):
            row.update(host=run.host, port=run.port, pid=run.pid)
            try:
                row["detail"] = call_sync(
                    run.host,
                    run.port,
                    config.secret(),
                    "node.status",
                    peer=run.name,
                    timeout=config.wire.timeout,
                )
                row["state"] = "up"
            except NodeError as err:
                row["state"] = "unresponsive"
                row["detail"] = {"error": str(err)}
        rows.append(row)
    return rows


def running(config: Config) -> list[str]:
    """The nodes of the topology whose process runs now."""
    return [spec.name for spec in topology(config) if _alive(config, spec.name) is not None]


def controller(config: Config) -> RunFile:
    """The running controller's run file; NetworkNotRunning if there is none."""
    run = RunFile.read(config.run_dir / "controller.json")
    if run is None or not process_alive(run.pid):
        raise NetworkNotRunning()
    return run


def _alive(config: Config, name: str) -> RunFile | None:
    run = RunFile.read(config.run_dir / f"{name}.json")
    if run is not None and process_alive(run.pid):
        return run
    return None


def _spawn(config: Config, spec: NodeSpec, env: Mapping[str, str]) -> int:
    (config.run_dir / f"{spec.name}.json").unlink(missing_ok=True)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    logfile = config.log_dir / f"{spec.name}.log"
    command = [
        sys.executable,
        "-m",
        "cli",
        "--config",
        str(config.path),
        "node",
        "run",
        "--role",
        spec.role,
        "--name",
        spec.name,
    ]
    log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.posix_spawn(
            sys.executable,
            command,
            {k: v for k, v in env.items() if k not in PRIVATE_ENV},
            setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
        )
    finally:
        os.close(log_fd)


def _wait_started(config: Config, spec: NodeSpec, pid: int) -> RunFile:
    runfile = config.run_dir / f"{spec.name}.json"
    logfile = config.log_dir / f"{spec.name}.log"
    deadline = time.monotonic() + config.network.start_timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            raise NodeError(f"node {spec.name} exited at start: {_last_line(logfile)}")
        run = RunFile.read(runfile)
        if run is not None and run.pid == pid:
            return run
        time.sleep(0.05)
    raise NodeError(
        f"node {spec.name} did not start within {config.network.start_timeout:g} s; see {logfile}"
    )


def _exited(pid: int) -> bool:
    """Reap `pid` if it is a child of this process that has exited."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not process_alive(pid)
    return done == pid


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return


def _terminate(pid: int) -> None:
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if _exited(pid) or not process_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _exited(pid)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
