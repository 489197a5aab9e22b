"""Fast rollback across kill -9 of the business node, the controller and the mirror's node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Deployment, running
from tests.e2e.processes import kill_node
from tests.e2e.qemu import qemu_io

pytestmark = pytest.mark.slow
KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running(tmp_path_factory.mktemp("fastcrash") / "deployment") as deployment:
        yield deployment


def prepared(net: Deployment, vm: str) -> tuple[str, dict[str, Any]]:
    """A VM with pattern 0x41 in its first MiB, snapshotted, then overwritten with 0x42."""
    net.ok("vm", "register", vm, "--ip", "10.0.0.71", "--disk", "system:root:8M")
    url = str(net.ok("disk", "url", vm, "root").stdout.strip())
    qemu_io(url, f"write -P 0x41 0 {MiB}", "flush")
    snap = net.json("snapshot", "create", vm)
    qemu_io(url, f"write -P 0x42 0 {MiB}", "flush")
    return url, snap


def expected_after(net: Deployment, snap: dict[str, Any], tmp_path: Path) -> bytearray:
    target = tmp_path / "snap.raw"
    vm = snap["vm"]
    net.ok("disk", "export", vm, "root", str(target), "--force", "--snapshot", snap["id"])
    return bytearray(target.read_bytes())


def live(net: Deployment, vm: str, tmp_path: Path) -> bytes:
    target = tmp_path / "live.raw"
    net.ok("disk", "export", vm, "root", str(target), "--force")
    return target.read_bytes()


def test_a_restarted_business_node_still_serves_the_mirror(net: Deployment, tmp_path: Path) -> None:
    url, snap = prepared(net, "crash-biz")
    kill_node(net.root, "transfer-1", forget=True)
    net.ok("rollback", "start", "crash-biz", snap["id"], "--fast")
    qemu_io(url, f"write -P 0x43 {64 * KiB} 4k", "flush")
    kill_node(net.root, "business-1", forget=True)
    net.ok("up")
    # Free ports in tests: the restarted node's NBD port is new (fixed with network.base_port).
    url = str(net.ok("disk", "url", "crash-biz", "root").stdout.strip())
    qemu_io(url, f"read -P 0x41 0 {64 * KiB}", f"read -P 0x43 {64 * KiB} 4k")
    net.ok("rollback", "finish", "crash-biz")
    expected = expected_after(net, snap, tmp_path)
    expected[64 * KiB : 68 * KiB] = b"\x43" * (4 * KiB)
    assert live(net, "crash-biz", tmp_path) == bytes(expected)


def test_a_killed_controller_resumes_the_rollback_from_the_ledger(
    net: Deployment, tmp_path: Path
) -> None:
    url, snap = prepared(net, "crash-ctl")
    kill_node(net.root, "transfer-1", forget=True)
    net.ok("rollback", "start", "crash-ctl", snap["id"], "--fast")
    qemu_io(url, f"write -P 0x44 {128 * KiB} 4k", "flush")
    kill_node(net.root, "controller", forget=True)
    net.ok("up")
    assert net.json("rollback", "status", "crash-ctl")["phase"] in ("mirrored", "restored")
    qemu_io(url, f"read -P 0x41 0 {64 * KiB}", f"read -P 0x44 {128 * KiB} 4k")
    net.ok("rollback", "finish", "crash-ctl")
    expected = expected_after(net, snap, tmp_path)
    expected[128 * KiB : 132 * KiB] = b"\x44" * (4 * KiB)
    assert live(net, "crash-ctl", tmp_path) == bytes(expected)
    assert net.json("rollback", "diff", "crash-ctl")["ok"] is True


def test_an_acknowledged_write_survives_kill_9_of_the_mirrors_node(
    net: Deployment, tmp_path: Path
) -> None:
    url, snap = prepared(net, "crash-mir")
    started = net.json("rollback", "start", "crash-mir", snap["id"], "--fast")
    holder = started["tags"][0]["node"]
    qemu_io(url, f"write -P 0x45 {192 * KiB} 4k", "flush")
    kill_node(net.root, holder, forget=True)
    net.ok("up")
    qemu_io(url, f"read -P 0x45 {192 * KiB} 4k", f"read -P 0x41 0 {64 * KiB}")
    net.ok("rollback", "finish", "crash-mir")
    expected = expected_after(net, snap, tmp_path)
    expected[192 * KiB : 196 * KiB] = b"\x45" * (4 * KiB)
    assert live(net, "crash-mir", tmp_path) == bytes(expected)
    assert net.json("rollback", "diff", "crash-mir")["ok"] is True


def test_a_fast_rollback_whose_mirrors_cannot_be_made_is_abandoned_and_the_vm_keeps_its_disk(
    net: Deployment, tmp_path: Path
) -> None:
    url, snap = prepared(net, "crash-none")
    for node in ("backup-1", "backup-2", "backup-3"):
        kill_node(net.root, node, forget=True)
    failed = net.run("rollback", "start", "crash-none", snap["id"], "--fast")
    assert failed.exit_code == 3, failed.output
    assert failed.output.count("\n") == 1
    row = net.json("rollback", "status", "crash-none")
    assert (row["status"], row["phase"]) == ("abandoned", "abandoned")
    assert "mirrors could not be made" in row["reason"]
    qemu_io(url, f"read -P 0x42 0 {MiB}")
    net.ok("up")
    net.ok("rollback", "start", "crash-none", snap["id"], "--fast", "--auto")
