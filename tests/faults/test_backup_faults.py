"""Faults of the backup cluster: a full disk, a slow node, kill -9 during ``backup repair``.

A full disk is a backup node's quota (``storage.quota_bytes``, set through its environment
when the node is restarted); a slow node answers every request later
(``VMSNAP_REPLY_DELAY``); a repair is killed at its crash point, in the repair's own
process or in a backup node, then run again.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from nodes.crashpoints import CRASH_ENV, DELAY_ENV
from tests.cli.conftest import Deployment
from tests.faults.cases import MiB, register, snapshots, take
from tests.faults.invariants import DiskModel, Invariants
from tests.faults.network import cli_process, reap_killed, stop_node, up
from tests.faults.tally import TALLY

pytestmark = pytest.mark.slow
MODELS: dict[str, DiskModel] = {}
BACKUPS = ("backup-1", "backup-2", "backup-3")
SLOW_REPLY = 1.0
SLOW_BOUND = 30.0
"""Seconds a snapshot, or reading one back, may take while one backup node is slow."""


def imported(net: Deployment, model: DiskModel, tmp: Path, size: int, seed: int) -> None:
    """Load `size` bytes of incompressible data at the start of the VM's disk."""
    data = random.Random(seed).randbytes(size)
    image = tmp / f"{model.vm}.raw"
    image.write_bytes(data + bytes(model.size - size))
    net.ok("disk", "import", model.vm, "root", str(image))
    model.data[:size] = data


def pack_bytes(net: Deployment, node: str) -> int:
    """Bytes of pack files the node's store holds."""
    rows = {r["name"]: r for r in net.json("status")}
    return int(rows[node]["detail"]["pack_bytes"])


def restart_backups(net: Deployment, env: dict[str, str]) -> None:
    """Restart every backup node with `env` added to its environment."""
    for node in BACKUPS:
        stop_node(net, node)
    up(net, env)


def test_a_snapshot_onto_a_full_backup_node_fails_cleanly_and_succeeds_once_space_is_freed(
    net: Deployment, invariants: Invariants, tmp_path: Path
) -> None:
    # The quota leaves less than two chunks of room on the fullest node. The big snapshot's
    # 32 chunks put at least 22 there (64 copies on 3 nodes), so the small one's 16 fit on
    # any node once the big one is gone, wherever the deployment's key places them; beside
    # it they fit only if at most one of the 16 lands there (under one chance in a million).
    big = register(net, "full-big", MODELS)
    imported(net, big, tmp_path, 2 * MiB, 1)
    doomed = take(net, big)
    quota = max(pack_bytes(net, n) for n in BACKUPS) + 128 * 1024
    restart_backups(net, {"VMSNAP_STORAGE_QUOTA_BYTES": str(quota)})
    try:
        TALLY.fault("backup node disk full (quota)")
        small = register(net, "full-small", MODELS)
        imported(net, small, tmp_path, MiB, 2)
        failed = net.run("snapshot", "create", small.vm)
        assert failed.exit_code != 0 and failed.output.count("\n") == 1, failed.output
        assert "is full" in failed.output
        (row,) = snapshots(net, small.vm)
        assert row["status"] == "failed" and not row["disk_details"], "no partial manifest"
        audit = net.run("audit", "snapshot", row["id"], "--json")
        assert '"status": "failed"' in audit.stdout, "the contract records the snapshot failed"
        TALLY.ended(False)
        invariants.check(MODELS.values())
        net.ok("snapshot", "delete", doomed)
        del big.images[doomed]
        assert max(pack_bytes(net, n) for n in BACKUPS) <= quota
        again = take(net, small)
        assert [s["status"] for s in snapshots(net, small.vm)] == ["failed", "committed"]
        assert again in small.images
        TALLY.ended(True, rerun=True)
        invariants.check(MODELS.values())
    finally:
        restart_backups(net, {})


def test_a_slow_backup_node_does_not_stall_snapshots_or_reads(
    net: Deployment, invariants: Invariants, tmp_path: Path
) -> None:
    stop_node(net, "backup-2")
    up(net, {DELAY_ENV: str(SLOW_REPLY)})
    TALLY.fault("backup node answering 1 s late")
    model = register(net, "slow-01", MODELS)
    imported(net, model, tmp_path, MiB, 3)
    started = time.monotonic()
    snap = take(net, model)
    taken = time.monotonic() - started
    started = time.monotonic()
    out = tmp_path / "back.raw"
    net.ok("disk", "export", model.vm, "root", str(out), "--force", "--snapshot", snap)
    read = time.monotonic() - started
    assert out.read_bytes() == model.images[snap]
    assert taken < SLOW_BOUND and read < SLOW_BOUND, (taken, read)
    TALLY.ended(True)
    invariants.check(MODELS.values())
    stop_node(net, "backup-2")
    up(net)


def under_replicated(net: Deployment) -> Path:
    """Replace backup-3 by an empty node, so a repair has copies to make; its chunk folder."""
    stop_node(net, "backup-3")
    chunks = net.root / "data" / "nodes" / "backup-3" / "chunks"
    shutil.rmtree(chunks)
    up(net)
    return chunks


@pytest.mark.parametrize("victim", ["repair", "backup-3", "backup-1"])
def test_a_repair_killed_mid_way_finishes_when_run_again(
    net: Deployment, invariants: Invariants, tmp_path: Path, victim: str
) -> None:
    if not net.json("snapshot", "list"):
        model = register(net, "repair-01", MODELS)
        imported(net, model, tmp_path, MiB, 4)
        take(net, model)
    under_replicated(net)
    point = "repair.copied" if victim == "repair" else f"repair.copied@{victim}"
    killed = cli_process(net, "backup", "repair", "--json", env={CRASH_ENV: point})
    assert killed.returncode != 0, "the crash point ended the repair"
    assert reap_killed(net) == ([] if victim == "repair" else [victim])
    TALLY.fault(f"kill -9 {'the repair process' if victim == 'repair' else 'backup'} mid-repair")
    up(net)
    report = net.json("backup", "repair")
    assert report["under_replicated"] == 0 and report["unreachable"] == []
    TALLY.ended(True, rerun=True)
    invariants.check(MODELS.values())
