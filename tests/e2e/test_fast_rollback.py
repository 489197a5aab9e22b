"""Fast rollback on a real local network, with qemu-io as the VM."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Deployment, running
from tests.e2e.processes import kill_node
from tests.e2e.qemu import qemu_io, tool

pytestmark = pytest.mark.slow
KiB, MiB = 1 << 10, 1 << 20
SIZE = 8 * MiB


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running(tmp_path_factory.mktemp("fast") / "deployment") as deployment:
        yield deployment


def register(net: Deployment, vm: str) -> str:
    net.ok("vm", "register", vm, "--ip", "10.0.0.61", "--disk", f"system:root:{SIZE // MiB}M")
    return str(net.ok("disk", "url", vm, "root").stdout.strip())


def export(net: Deployment, vm: str, target: Path) -> bytes:
    net.ok("disk", "export", vm, "root", str(target), "--force")
    return target.read_bytes()


def events_of(net: Deployment, vm: str) -> list[dict[str, Any]]:
    return list(net.json("ledger", "log", "--vm", vm))


def test_fast_rollback_serves_the_snapshot_at_once_and_keeps_the_writes_made_meanwhile(
    net: Deployment, tmp_path: Path
) -> None:
    url = register(net, "fr-01")
    qemu_io(url, f"write -P 0x41 0 {MiB}", f"write -P 0x44 {5 * MiB} 64k", "flush")
    snap = net.json("snapshot", "create", "fr-01")
    at_snapshot = export(net, "fr-01", tmp_path / "a.raw")
    qemu_io(url, f"write -P 0x42 0 {MiB}", f"write -P 0x42 {4 * MiB} 64k", "flush")

    # Without a transfer node the background restore cannot run: whatever the VM reads
    # now comes from the mirror on the backup cluster.
    kill_node(net.root, "transfer-1", forget=True)
    started = net.json("rollback", "start", "fr-01", snap["id"][:12], "--fast")
    assert started["mode"] == "fast"
    qemu_io(url, f"read -P 0x41 0 {MiB}", f"read -P 0x44 {5 * MiB} 64k", f"read -P 0 {4 * MiB} 64k")
    status = net.json("rollback", "status", "fr-01")
    assert (status["status"], status["phase"]) == ("running", "mirrored")
    assert "transfer-1" in status["restore"]["waiting"], "the restore waits for a transfer node"
    assert export(net, "fr-01", tmp_path / "live.raw")[:MiB] == b"\x42" * MiB, (
        "the business volume is not restored yet"
    )

    qemu_io(url, f"write -P 0x43 {512 * KiB} 64k", f"write -P 0x43 {6 * MiB} 4k", "flush")
    qemu_io(url, f"read -P 0x43 {512 * KiB} 64k", f"read -P 0x41 {576 * KiB} 64k")
    assert net.json("rollback", "status", "fr-01")["journals"][0]["written_since_start"] == 2

    net.ok("up")
    # A collection while the mirror is open must keep the chunks only its journal references:
    # finish below fetches them to apply the difference.
    net.json("backup", "gc")
    finished = net.json("rollback", "finish", "fr-01")
    assert finished["changed_chunks"] == 2

    expected = bytearray(at_snapshot)
    expected[512 * KiB : 576 * KiB] = b"\x43" * (64 * KiB)
    expected[6 * MiB : 6 * MiB + 4 * KiB] = b"\x43" * (4 * KiB)
    assert export(net, "fr-01", tmp_path / "after.raw") == bytes(expected)
    qemu_io(url, f"read -P 0x43 {6 * MiB} 4k", f"read -P 0x41 0 {512 * KiB}")

    audit = net.json("rollback", "diff", "fr-01")
    assert audit["ok"] is True and audit["changed_chunks"] == 2
    assert audit["recomputed_root"] == audit["recorded_root"]
    types = [e["type"] for e in events_of(net, "fr-01")]
    tail = types[types.index("RollbackStarted") :]
    assert tail == [
        "RollbackStarted",
        "RollbackStartTagged",
        "RollbackRestored",
        "RollbackEndTagged",
        "RollbackFinished",
    ]
    assert net.json("ledger", "verify")["ok"] is True
    net.json("backup", "gc")
    assert net.json("snapshot", "verify", snap["id"])["ok"] is True


def test_rollback_diff_fails_loudly_when_every_copy_of_the_journal_was_altered(
    net: Deployment,
) -> None:
    row = net.json("rollback", "status", "fr-01")
    mirror = row["end_tags"][0]["mirror"]
    copies = sorted(net.root.glob(f"data/nodes/backup-*/mirrors/{mirror}/journal.log"))
    assert len(copies) == 2, "the journal is on R backup nodes"
    for copy in copies:
        raw = bytearray(copy.read_bytes())
        raw[20] ^= 0xFF
        copy.write_bytes(bytes(raw))
    for node in ("backup-1", "backup-2", "backup-3"):
        kill_node(net.root, node, forget=True)
    net.ok("up")
    result = net.run("rollback", "diff", "fr-01")
    assert result.exit_code == 6, result.output
    assert "DOES NOT match the root on chain" in result.output
    assert "breaks at record 1" in result.output


def test_writes_during_the_switch_back_are_not_lost(net: Deployment, tmp_path: Path) -> None:
    url = register(net, "fr-02")
    qemu_io(url, f"write -P 0x11 0 {MiB}", "flush")
    snap = net.json("snapshot", "create", "fr-02")
    net.ok("rollback", "start", "fr-02", snap["id"], "--fast")
    commands: list[str] = []
    for k in range(1, 97):
        commands += ["-c", f"write -P {k} {(16 + k) * 64 * KiB} 4k"]
    writer = subprocess.Popen(
        [tool("qemu-io"), "-f", "raw", *commands, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        net.ok("rollback", "finish", "fr-02")
    finally:
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, out + err
    disk = export(net, "fr-02", tmp_path / "fr02.raw")
    for k in range(1, 97):
        offset = (16 + k) * 64 * KiB
        assert disk[offset : offset + 4 * KiB] == bytes([k]) * (4 * KiB), f"write {k} was lost"
    assert disk[:MiB] == b"\x11" * MiB
    assert net.json("rollback", "diff", "fr-02")["ok"] is True


def test_auto_finishes_once_the_restore_is_done(net: Deployment) -> None:
    url = register(net, "fr-03")
    qemu_io(url, "write -P 0x21 0 64k", "flush")
    snap = net.json("snapshot", "create", "fr-03")
    qemu_io(url, "write -P 0x22 0 64k", "flush")
    net.ok("rollback", "start", "fr-03", snap["id"], "--fast", "--auto")
    for _ in range(200):
        if net.json("rollback", "status", "fr-03")["status"] == "finished":
            break
        qemu_io(url, "read -P 0x21 0 64k")
    assert net.json("rollback", "status", "fr-03")["status"] == "finished"
    qemu_io(url, "read -P 0x21 0 64k")


def wait_restored(net: Deployment, vm: str, timeout: float = 60.0) -> None:
    """Wait until the running fast rollback of `vm` has restored its business volume."""
    deadline = time.monotonic() + timeout
    while net.json("rollback", "status", vm)["phase"] != "restored":
        assert time.monotonic() < deadline, "the background restore did not finish"
        time.sleep(0.2)


@pytest.mark.parametrize("case", ["finish-idle", "deleted", "other-vm", "second", "auto-alone"])
def test_bad_fast_rollbacks_are_one_line_and_change_nothing(net: Deployment, case: str) -> None:
    vm = f"bad-{case}"
    register(net, vm)
    first = net.json("snapshot", "create", vm)
    second = net.json("snapshot", "create", vm)
    args: list[str]
    if case == "finish-idle":
        args, code = ["rollback", "finish", vm], 4
    elif case == "deleted":
        net.ok("snapshot", "delete", first["id"])
        args, code = ["rollback", "start", vm, first["id"], "--fast"], 2
    elif case == "other-vm":
        other = net.json("snapshot", "list", "fr-01")[0]["id"]
        args, code = ["rollback", "start", vm, other, "--fast"], 2
    elif case == "second":
        net.ok("rollback", "start", vm, first["id"], "--fast")
        wait_restored(net, vm)  # the background restore records an event of its own
        args, code = ["rollback", "start", vm, second["id"], "--fast"], 5
    else:
        args, code = ["rollback", "start", vm, first["id"], "--auto"], 2
    before = net.json("ledger", "head")
    result = net.run(*args)
    assert result.exit_code == code, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert net.json("ledger", "head") == before
    if case == "second":
        net.ok("rollback", "finish", vm)
