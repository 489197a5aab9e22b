"""Normal rollback on a real local network, with the command VM driver."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Deployment, make_deployment
from tests.e2e.processes import kill_node
from tests.e2e.qemu import qemu_io

pytestmark = pytest.mark.slow
MiB = 1 << 20
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = make_deployment(tmp_path_factory.mktemp("rollback") / "deployment")
    marks = deployment.root / "marks"
    marks.mkdir()
    hook = deployment.root / "hook.py"
    hook.write_text(
        "import pathlib, sys, time\n"
        "marks, action, vm = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "delay = marks / 'delay'\n"
        "if action == 'stop' and delay.exists():\n"
        "    time.sleep(float(delay.read_text()))\n"
        "if action == 'stop' and (marks / 'fail').exists():\n"
        "    sys.exit('the hypervisor refused')\n"
        "with (marks / 'log').open('a') as log:\n"
        "    log.write(f'{action} {vm}\\n')\n"
    )
    config = deployment.config.read_text()
    config = config.replace('kind = "none"', 'kind = "command"')
    config = config.replace(
        'stop_command = ""', f'stop_command = "{sys.executable} {hook} {marks} stop {{vm}}"'
    )
    config = config.replace(
        'start_command = ""', f'start_command = "{sys.executable} {hook} {marks} start {{vm}}"'
    )
    deployment.config.write_text(config)
    deployment.ok("up")
    try:
        deployment.ok("vm", "register", "app-01", "--ip", "10.0.0.31", "--disk", "system:root:32M")
        yield deployment
    finally:
        deployment.run("down")


def _export(net: Deployment, target: Path, snapshot: str | None = None) -> bytes:
    args = ["disk", "export", "app-01", "root", str(target), "--force"]
    if snapshot:
        args += ["--snapshot", snapshot]
    net.ok(*args)
    return target.read_bytes()


def _log(net: Deployment) -> list[str]:
    path = net.root / "marks" / "log"
    return path.read_text().splitlines() if path.exists() else []


def test_rollback_restores_only_the_differing_chunks_and_restarts_the_vm(
    net: Deployment, tmp_path: Path
) -> None:
    image = tmp_path / "a.raw"
    image.write_bytes(random.Random(3).randbytes(4 * MiB))
    net.ok("disk", "import", "app-01", "root", str(image))
    snap = net.json("snapshot", "create", "app-01")
    url = str(net.ok("disk", "url", "app-01", "root").stdout.strip())
    qemu_io(url, "write -P 0x77 0 64k", "write -P 0x78 8M 192k", "discard 1M 128k", "flush")
    assert _export(net, tmp_path / "changed.raw") != _export(net, tmp_path / "s.raw", snap["id"])
    result = net.json("rollback", "start", "app-01", snap["id"][:12])
    assert result["chunks_restored"] == 1 + 3 + 2
    # Only chunks holding data in the snapshot (the 4 MiB image) or now (3 more at 8M) are
    # compared; the rest of the 32 MiB disk is holes on both sides.
    assert result["chunks_checked"] == 4 * MiB // CHUNK + 3
    assert _export(net, tmp_path / "live.raw") == _export(net, tmp_path / "s2.raw", snap["id"])
    assert _log(net)[-2:] == ["stop app-01", "start app-01"]
    (row,) = net.json("rollback", "list", "app-01")
    assert row["status"] == "finished"
    types = [e["type"] for e in net.json("ledger", "log", "--vm", "app-01")]
    assert types[-2:] == ["RollbackStarted", "RollbackFinished"]


def test_rollback_of_another_vms_snapshot_or_an_unknown_one_is_refused(net: Deployment) -> None:
    snap = net.json("snapshot", "list", "app-01")[-1]
    net.ok("vm", "register", "other-01", "--ip", "10.0.0.32", "--disk", "system:root:8M")
    wrong = net.run("rollback", "start", "other-01", snap["id"])
    assert wrong.exit_code == 2
    assert "is of VM 'app-01'" in wrong.output
    unknown = net.run("rollback", "start", "app-01", "feedbeef")
    assert unknown.exit_code == 4


def _vmsnap(net: Deployment, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "--config", str(net.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(net: Deployment, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [r for r in net.json("rollback", "list", "app-01") if r["status"] == "running"]
        if running:
            return
        time.sleep(0.05)
    raise AssertionError(f"no running rollback ({what})")


def test_a_snapshot_during_a_rollback_is_refused(net: Deployment) -> None:
    snap = net.json("snapshot", "list", "app-01")[-1]
    (net.root / "marks" / "delay").write_text("3")
    try:
        rollback = _vmsnap(net, "rollback", "start", "app-01", snap["id"])
        _wait_for(net, "rollback started")
        refused = net.run("snapshot", "create", "app-01")
        assert refused.exit_code == 5
        assert "is being rolled back" in refused.output
        _out, err = rollback.communicate(timeout=60)
        assert rollback.returncode == 0, err
    finally:
        (net.root / "marks" / "delay").unlink()


def test_kill_9_of_the_controller_mid_rollback_is_finished_after_restart(
    net: Deployment, tmp_path: Path
) -> None:
    snap = net.json("snapshot", "list", "app-01")[-1]
    url = str(net.ok("disk", "url", "app-01", "root").stdout.strip())
    qemu_io(url, "write -P 0x55 2M 256k", "flush")
    (net.root / "marks" / "delay").write_text("2")
    try:
        rollback = _vmsnap(net, "rollback", "start", "app-01", snap["id"])
        _wait_for(net, "rollback started")
        listed = net.json("rollback", "list", "app-01")
        interrupted = [r for r in listed if r["status"] == "running"]
        pid = int(json.loads((net.root / "data" / "run" / "controller.json").read_text())["pid"])
        os.kill(pid, signal.SIGKILL)
        rollback.communicate(timeout=30)
    finally:
        (net.root / "marks" / "delay").unlink()
    net.ok("up")
    deadline = time.monotonic() + 30
    rows = net.json("rollback", "list", "app-01")
    while rows[-1]["status"] != "finished" and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = net.json("rollback", "list", "app-01")
    assert [r["id"] for r in interrupted] == [rows[-1]["id"]], "the same rollback was finished"
    assert rows[-1]["status"] == "finished"
    assert _export(net, tmp_path / "live.raw") == _export(net, tmp_path / "s.raw", snap["id"])
    assert all(r["status"] == "finished" for r in net.json("rollback", "list", "app-01"))


def test_a_fast_rollback_stopped_after_its_end_tag_finishes_when_the_controller_restarts(
    net: Deployment, tmp_path: Path
) -> None:
    url = str(net.ok("disk", "url", "app-01", "root").stdout.strip())
    qemu_io(url, "write -P 0x51 0 64k", "flush")
    snap = net.json("snapshot", "create", "app-01")
    qemu_io(url, "write -P 0x52 0 64k", "flush")
    net.ok("rollback", "start", "app-01", snap["id"], "--fast")
    assert _log(net)[-2:] == ["stop app-01", "start app-01"]
    qemu_io(url, "read -P 0x51 0 64k", "write -P 0x53 64k 4k", "flush")
    (net.root / "marks" / "fail").write_text("")
    failed = net.run("rollback", "finish", "app-01")
    assert failed.exit_code != 0 and "hypervisor refused" in failed.output
    assert net.json("rollback", "status", "app-01")["phase"] == "ending"
    (net.root / "marks" / "fail").unlink()
    kill_node(net.root, "controller", forget=True)
    deadline = time.monotonic() + 60
    net.ok("up")
    while net.json("rollback", "status", "app-01")["status"] != "finished":
        assert time.monotonic() < deadline, "recovery did not finish the rollback"
        time.sleep(0.2)
    expected = bytearray(_export(net, tmp_path / "s.raw", snap["id"]))
    expected[64 * 1024 : 68 * 1024] = b"\x53" * 4096
    assert _export(net, tmp_path / "live.raw") == bytes(expected)
    assert _log(net)[-2:] == ["stop app-01", "start app-01"]
    assert net.json("rollback", "diff", "app-01")["ok"] is True
