"""Crash points: inert without VMSNAP_CRASH_AT, exact with it, and bad entries refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.errors import InputError
from nodes import crashpoints
from nodes.runfile import RunFile, process_alive
from tests.cli.conftest import make_deployment


@pytest.fixture(autouse=True)
def disarmed(tmp_path: Path) -> Iterator[None]:
    """Every test starts and ends with nothing armed in this process."""
    crashpoints.arm("", tmp_path)
    yield
    crashpoints.arm("", tmp_path)


def sleeper(run_dir: Path, name: str) -> subprocess.Popen[bytes]:
    """A real process standing in for node `name`, with its run file."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    RunFile(name, "backup", child.pid, "127.0.0.1", 1, time.time()).write(run_dir)
    return child


def test_an_unarmed_point_does_nothing(tmp_path: Path) -> None:
    child = sleeper(tmp_path, "backup-1")
    try:
        for point in sorted(crashpoints.POINTS):
            crashpoints.crash_point(point, "vm-1")
        assert process_alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_point_armed_for_a_node_and_a_vm_kills_that_node_there_once(tmp_path: Path) -> None:
    child = sleeper(tmp_path, "backup-1")
    try:
        crashpoints.arm("snapshot.frozen:vm-1@backup-1", tmp_path)
        crashpoints.crash_point("snapshot.frozen", "vm-2")
        crashpoints.crash_point("snapshot.processed", "vm-1")
        assert child.poll() is None, "another VM or another point leaves it alone"
        crashpoints.crash_point("snapshot.frozen", "vm-1")
        assert child.wait(timeout=10) == -9
        crashpoints.crash_point("snapshot.frozen", "vm-1")  # fired once: nothing left to kill
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_point_armed_without_a_node_kills_the_process_that_reaches_it() -> None:
    code = (
        "from pathlib import Path; from nodes import crashpoints as c;"
        "c.arm('repair.copied', Path('.')); c.crash_point('rollback.started');"
        "print('passed other points', flush=True); c.crash_point('repair.copied');"
        "print('survived')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -9
    assert done.stdout == "passed other points\n"


@pytest.mark.parametrize(
    "spec", ["snapshot.froze", "snapshot.frozen@", "snapshot.frozen:", "x@backup-1"]
)
def test_a_malformed_entry_is_refused(tmp_path: Path, spec: str) -> None:
    with pytest.raises(InputError, match="VMSNAP_CRASH_AT"):
        crashpoints.arm(spec, tmp_path)


@pytest.mark.parametrize("value", ["fast", "-1", "4000"])
def test_a_bad_reply_delay_is_refused(value: str) -> None:
    with pytest.raises(InputError, match="VMSNAP_REPLY_DELAY"):
        crashpoints.reply_delay(value)


def test_a_node_started_with_a_bad_crash_point_exits_with_one_line(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "deployment")
    command = ["node", "run", "--role", "backup", "--name", "backup-1"]
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(deployment.config), *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, crashpoints.CRASH_ENV: "snapshot.nowhere"},
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "snapshot.nowhere" in done.stderr
    assert "Traceback" not in done.stderr
