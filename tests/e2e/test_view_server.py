"""The business node's view server: a process of its own for the snapshot's reads."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.client import NodeClient
from nodes.config import load_config
from nodes.runfile import process_alive
from tests.cli.conftest import Deployment, running
from tests.e2e.processes import kill_node, runfile

pytestmark = pytest.mark.slow
MiB = 1 << 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running(tmp_path_factory.mktemp("views") / "deployment") as deployment:
        yield deployment


def ping(net: Deployment, port: int) -> dict[str, object]:
    """The view server's answer to the built-in ping, over an authenticated connection."""
    config = load_config(net.config, {})

    async def call() -> dict[str, object]:
        async with NodeClient("127.0.0.1", port, config.secret(), peer="business-1") as client:
            return await client.call("ping")

    return asyncio.run(call())


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def view_server_pid(net: Deployment, old: int | None = None) -> int:
    """The running view server's pid (a new one, when `old` is given), within 10 s."""
    deadline = time.monotonic() + 10
    while True:
        (row,) = [r for r in net.json("status") if r["name"] == "business-1"]
        pid = row["detail"].get("view_server_pid")
        if pid is not None and pid != old and process_alive(pid):
            return int(pid)
        assert time.monotonic() < deadline, "no view server came up"
        time.sleep(0.1)


def disk(net: Deployment, name: str, tmp_path: Path, size: int) -> bytes:
    """Register VM `name` with a 64 MiB disk and import `size` random bytes into it."""
    net.ok("vm", "register", name, "--ip", "10.0.0.50", "--disk", "system:root:64M")
    image = tmp_path / f"{name}.raw"
    data = random.Random(name).randbytes(size)
    image.write_bytes(data)
    net.ok("disk", "import", name, "root", str(image))
    return data


def export(net: Deployment, name: str, snapshot: str, target: Path) -> bytes:
    net.ok("disk", "export", name, "root", str(target), "--snapshot", snapshot, "--force")
    return target.read_bytes()


def test_snapshot_reads_are_served_by_a_view_server_process_of_its_own(
    net: Deployment, tmp_path: Path
) -> None:
    business = runfile(net.root, "business-1")
    pid = view_server_pid(net)
    assert business["view_port"] > 0
    assert ping(net, business["view_port"]) == {"node": "business-1", "pid": pid}
    assert pid != business["pid"]
    assert os.getsid(pid) == pid, "it leads a session of its own"
    assert (
        os.getpriority(os.PRIO_PROCESS, pid) == load_config(net.config, {}).storage.background_nice
    )

    data = disk(net, "reads", tmp_path, 32 * MiB)
    before = cpu_ticks(pid)
    snap = net.json("snapshot", "create", "reads")
    assert cpu_ticks(pid) - before >= 3, "the view server read and sent the 32 MiB"
    assert export(net, "reads", snap["id"], tmp_path / "reads.out")[: 32 * MiB] == data


def test_kill_9_of_the_view_server_mid_snapshot_still_commits_the_exact_disk(
    net: Deployment, tmp_path: Path
) -> None:
    port = runfile(net.root, "business-1")["view_port"]
    pid = view_server_pid(net)
    disk(net, "warm-views", tmp_path, 4 * MiB)
    net.json("snapshot", "create", "warm-views")  # the transfer node is connected to it now
    data = disk(net, "crash-views", tmp_path, 60 * MiB)
    cli = [sys.executable, "-m", "cli", "--config", str(net.config)]
    # Stopped, the view server holds the snapshot's first reads: the kill lands among them,
    # and the calls in flight are answered by the business node itself.
    os.kill(pid, signal.SIGSTOP)
    snapshot = subprocess.Popen(
        [*cli, "snapshot", "create", "crash-views", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not any(s["status"] == "pending" for s in net.json("snapshot", "list", "crash-views")):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    _out, err = snapshot.communicate(timeout=120)
    assert snapshot.returncode == 0, err
    (snap,) = net.json("snapshot", "list", "crash-views")
    assert snap["status"] == "committed"
    assert export(net, "crash-views", snap["id"], tmp_path / "crash.out")[: 60 * MiB] == data
    assert net.json("snapshot", "verify", snap["id"])["ok"] is True

    again = view_server_pid(net, old=pid)
    assert runfile(net.root, "business-1")["view_port"] == port
    assert ping(net, port)["pid"] == again


def test_a_hung_view_server_is_killed_and_the_snapshot_it_held_commits(
    net: Deployment, tmp_path: Path
) -> None:
    pid = view_server_pid(net)
    disk(net, "warm-hung", tmp_path, 4 * MiB)
    net.json("snapshot", "create", "warm-hung")  # the transfer node is connected to it now
    data = disk(net, "hung-views", tmp_path, 16 * MiB)
    log = net.root / "data" / "logs" / "business-1.log"
    logged = log.stat().st_size
    # Stopped, the view server is alive but answers nothing: only the business node's
    # pings can tell, and the snapshot's reads wait on it until it is killed.
    os.kill(pid, signal.SIGSTOP)
    try:
        snap = net.json("snapshot", "create", "hung-views")
        assert not process_alive(pid), "the business node killed its hung view server"
    finally:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert snap["status"] == "committed"
    with log.open("rb") as lines:
        lines.seek(logged)
        assert f"(pid {pid}) left a ping unanswered".encode() in lines.read()
    assert export(net, "hung-views", snap["id"], tmp_path / "hung.out")[: 16 * MiB] == data
    assert net.json("snapshot", "verify", snap["id"])["ok"] is True
    assert ping(net, runfile(net.root, "business-1")["view_port"])["pid"] == view_server_pid(
        net, old=pid
    )


def test_the_view_server_dies_with_its_business_node(net: Deployment) -> None:
    pid = view_server_pid(net)
    kill_node(net.root, "business-1")
    deadline = time.monotonic() + 10
    while process_alive(pid):
        assert time.monotonic() < deadline, "the view server outlived its business node"
        time.sleep(0.05)
    net.ok("up")
    assert view_server_pid(net) != pid
