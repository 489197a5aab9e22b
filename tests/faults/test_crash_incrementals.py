"""kill -9 of each role at each step of an incremental snapshot stored as patches.

Each case's VM has a committed full snapshot; then a few 4 KiB blocks are written, in two
chunks the full snapshot holds and in one it left a hole, so the incremental stores each
changed chunk as a patch (its parent's chunk plus the blocks written). A crash point kills
one node at one step of that incremental, the node is restarted, recovery commits or undoes
the snapshot, and every invariant is checked; each committed snapshot of the VM must also
export as the disk was when it was taken.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Deployment
from tests.faults.cases import (
    CHUNK,
    SNAPSHOT_STEPS,
    VICTIMS,
    CrashPlan,
    interrupted_snapshot,
    register,
    snapshots,
    take,
    vm_name,
)
from tests.faults.invariants import DiskModel, Invariants
from tests.faults.tally import TALLY

pytestmark = pytest.mark.slow
MODELS: dict[str, DiskModel] = {}
BLOCK = 4096
BLOCK_WRITES = [
    (BLOCK, BLOCK, 0x22),
    (2 * CHUNK + 2 * BLOCK, 2 * BLOCK, 0x23),
    (6 * CHUNK, BLOCK, 0x24),
]
"""(offset, length, pattern): 4 blocks in chunks 0 and 2, and one block in chunk 6, a hole."""


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", SNAPSHOT_STEPS)
def test_a_patched_incremental_interrupted_by_kill_9_is_committed_or_undone(
    net: Deployment, invariants: Invariants, point: str, role: str, tmp_path: Path
) -> None:
    model = register(net, vm_name(point, role), MODELS)
    model.write(net, 0, 4 * CHUNK, 0x21)
    take(net, model)
    # Armed only now: an entry fires at the first snapshot of its VM, here the incremental.
    plan = CrashPlan([point], [role])
    plan.arm(net)
    for offset, length, pattern in BLOCK_WRITES:
        model.write(net, offset, length, pattern)
    snap = interrupted_snapshot(net, model, plan, point, role)
    # The written blocks are sealed at the freeze, and then only they are read, as patches;
    # a business node killed before the freeze forgets them, and whole chunks are read.
    blocks_kept = role != "business" or point != "snapshot.requested"
    if snap["status"] == "committed" and blocks_kept:
        assert _bytes_read(net, snap["id"]) == sum(n for _o, n, _p in BLOCK_WRITES)
    invariants.check(MODELS.values())
    model.write(net, 3 * BLOCK, BLOCK, 0x25)
    take(net, model)
    assert [s["status"] for s in snapshots(net, model.vm)][-1] == "committed"
    _exports_match(net, model, tmp_path)


def _bytes_read(net: Deployment, snapshot: str) -> int:
    shown = net.json("snapshot", "show", snapshot)
    return sum(int(d["bytes_read"]) for d in shown["disk_details"])


def _exports_match(net: Deployment, model: DiskModel, scratch: Path) -> None:
    """Every committed snapshot of the VM exports as the disk was when it was taken."""
    for snapshot, image in model.images.items():
        out = scratch / f"{snapshot}.raw"
        net.ok("disk", "export", model.vm, "root", str(out), "--snapshot", snapshot)
        assert out.read_bytes() == image, f"snapshot {snapshot} does not export as taken"
        out.unlink()
    TALLY.checked("committed snapshot exports as the disk was taken", len(model.images))
