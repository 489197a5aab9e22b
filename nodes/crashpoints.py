"""Crash points: named places in the workflows where a fault-injection test kills a process.

A crash point does nothing unless the process was started with ``VMSNAP_CRASH_AT`` naming
it. The variable is read once, when a node process (``vmsnap node run``) or ``vmsnap backup
repair`` starts, and holds a comma-separated list of entries::

    POINT          the process SIGKILLs itself when it reaches POINT
    POINT@NODE     at POINT the process SIGKILLs node NODE of its deployment (its pid from
                   the run file), waits until it is gone, and carries on
    POINT:VM...    either of the above, only when the workflow at POINT is one of VM's

Each entry fires once. Every point is listed in `POINTS`; an entry naming another point, or
a malformed one, stops the process at start-up. ``VMSNAP_REPLY_DELAY=SECONDS`` makes a node
answer every request that much later (a slow node). docs/testing.md lists the points.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from ledger.errors import InputError
from nodes.runfile import RunFile, process_alive

CRASH_ENV = "VMSNAP_CRASH_AT"
DELAY_ENV = "VMSNAP_REPLY_DELAY"
KILL_WAIT = 10.0
log = logging.getLogger("vmsnap.crashpoints")

POINTS = frozenset(
    {
        "snapshot.requested",
        "snapshot.frozen",
        "snapshot.processed",
        "snapshot.committed",
        "delete.cleared",
        "delete.recorded",
        "retention.decided",
        "retention.deleted_one",
        "rollback.started",
        "rollback.restored",
        "fast.started",
        "fast.tagged",
        "fast.mirrored",
        "fast.end_tagged",
        "fast.applied",
        "repair.copied",
    }
)
"""Every crash point: ``WORKFLOW.STEP``, reached just after that step is done."""

_armed: dict[tuple[str, str], str | None] = {}
_run_dir: Path | None = None


def arm(spec: str, run_dir: Path) -> None:
    """Arm the crash points `spec` names (the value of ``VMSNAP_CRASH_AT``); '' arms none."""
    global _run_dir
    entries: dict[tuple[str, str], str | None] = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        where, _at, node = entry.partition("@")
        point, _colon, vm = where.partition(":")
        if point not in POINTS or (_at and not node) or (_colon and not vm):
            raise InputError(
                f"{CRASH_ENV}: {entry!r} is not POINT[:VM][@NODE] (see docs/testing.md)"
            )
        entries[(point, vm)] = node or None
    _armed.clear()
    _armed.update(entries)
    _run_dir = run_dir


def reply_delay(value: str) -> float:
    """The seconds ``VMSNAP_REPLY_DELAY`` asks for ('' is none)."""
    try:
        seconds = float(value or 0)
    except ValueError as err:
        raise InputError(f"{DELAY_ENV}: {value!r} is not a number of seconds") from err
    if not 0 <= seconds <= 3600:
        raise InputError(f"{DELAY_ENV}: {value!r} must be 0 to 3600 seconds")
    return seconds


def crash_point(name: str, vm: str = "") -> None:
    """Kill this process (or the named node) here if ``VMSNAP_CRASH_AT`` armed `name` (for `vm`)."""
    if not _armed:
        return
    key = (name, vm) if (name, vm) in _armed else (name, "")
    if key not in _armed:
        return
    target = _armed.pop(key)
    if target is None:
        log.warning("crash point %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
        return
    _kill_node(name, target)


def _kill_node(point: str, node: str) -> None:
    assert _run_dir is not None
    run = RunFile.read(_run_dir / f"{node}.json")
    if run is None:
        log.warning("crash point %s: node %s is not running", point, node)
        return
    log.warning("crash point %s: killing node %s (pid %d)", point, node, run.pid)
    try:
        os.kill(run.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_WAIT
    while process_alive(run.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
