"""kill -9 of each role at each step of snapshot create, snapshot delete and retention apply.

Each case arms one crash point on the controller (``VMSNAP_CRASH_AT``): at that step the
controller kills itself or the node of the role named, then the killed node is restarted
(``vmsnap up``), the controller recovers from the ledger's record, and every invariant is
checked on the whole deployment.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import Deployment
from tests.faults.cases import (
    CHUNK,
    VICTIMS,
    CrashPlan,
    register,
    settled_snapshot,
    snapshots,
    vm_name,
)
from tests.faults.invariants import DiskModel, Invariants
from tests.faults.network import wait_for
from tests.faults.tally import TALLY

pytestmark = pytest.mark.slow
MODELS: dict[str, DiskModel] = {}
SNAPSHOT_STEPS = [
    "snapshot.requested",
    "snapshot.frozen",
    "snapshot.processed",
    "snapshot.committed",
]
DELETE_STEPS = ["delete.cleared", "delete.recorded"]
RETENTION_STEPS = ["retention.decided", "retention.deleted_one"]
PLAN = CrashPlan(SNAPSHOT_STEPS + DELETE_STEPS + RETENTION_STEPS, list(VICTIMS))


@pytest.fixture(scope="module", autouse=True)
def armed(net: Deployment) -> None:
    """The controller runs with every case's crash point armed."""
    PLAN.arm(net)


def take(net: Deployment, model: DiskModel) -> str:
    """A committed snapshot of the VM as it is now; its id."""
    snap = net.json("snapshot", "create", model.vm)
    model.snapshot_taken(snap["id"])
    return str(snap["id"])


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", SNAPSHOT_STEPS)
def test_a_snapshot_interrupted_by_kill_9_is_committed_or_undone(
    net: Deployment, invariants: Invariants, point: str, role: str
) -> None:
    model = register(net, vm_name(point, role), MODELS)
    model.write(net, 0, 4 * CHUNK, 0x11)
    answered = net.run("snapshot", "create", model.vm, "--json")
    PLAN.restarted(net, point, role)
    snap = settled_snapshot(net, model.vm)
    if answered.exit_code == 0:
        assert snap["status"] == "committed", "an acknowledged snapshot stays committed"
    else:
        assert answered.output.count("\n") == 1, answered.output
    if snap["status"] == "committed":
        model.snapshot_taken(snap["id"])
    TALLY.ended(snap["status"] == "committed")
    invariants.check(MODELS.values())
    model.write(net, 8 * CHUNK, CHUNK, 0x12)
    take(net, model)
    assert [s["status"] for s in snapshots(net, model.vm)][-1] == "committed"


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", DELETE_STEPS)
def test_a_delete_interrupted_by_kill_9_is_finished_or_undone(
    net: Deployment, invariants: Invariants, point: str, role: str
) -> None:
    model = register(net, vm_name(point, role), MODELS)
    model.write(net, 0, 2 * CHUNK, 0x21)
    doomed = take(net, model)
    model.write(net, 0, CHUNK, 0x22)
    kept = take(net, model)
    answered = net.run("snapshot", "delete", doomed, "--json")
    PLAN.restarted(net, point, role)
    statuses = {s["id"]: s["status"] for s in snapshots(net, model.vm)}
    assert statuses[kept] == "committed"
    assert statuses[doomed] in {"deleted", "committed"}
    if answered.exit_code == 0:
        assert statuses[doomed] == "deleted", "an acknowledged delete stays done"
    TALLY.ended(statuses[doomed] == "deleted")
    invariants.check(MODELS.values())
    if statuses[doomed] == "committed":
        net.ok("snapshot", "delete", doomed)
    net.ok("backup", "gc")
    invariants.chunks_replicated()


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", RETENTION_STEPS)
def test_retention_interrupted_by_kill_9_leaves_whole_snapshots_and_finishes_on_rerun(
    net: Deployment, invariants: Invariants, point: str, role: str
) -> None:
    model = register(net, vm_name(point, role), MODELS)
    taken = []
    for k in range(3):
        model.write(net, k * CHUNK, CHUNK, 0x31 + k)
        taken.append(take(net, model))
    answered = net.run("retention", "apply", model.vm, "--keep-last", "1", "--json")
    PLAN.restarted(net, point, role)
    statuses = {s["id"]: s["status"] for s in snapshots(net, model.vm)}
    assert statuses[taken[-1]] == "committed"
    assert {statuses[s] for s in taken[:-1]} <= {"retired", "committed"}
    if answered.exit_code == 0:
        assert {statuses[s] for s in taken[:-1]} == {"retired"}
    invariants.check(MODELS.values())
    done = all(statuses[s] == "retired" for s in taken[:-1])
    if not done:
        net.ok("retention", "apply", model.vm, "--keep-last", "1")
        wait_for(
            "retention to finish",
            lambda: (
                [s["status"] for s in snapshots(net, model.vm)]
                == ["retired", "retired", "committed"]
            ),
        )
        invariants.check(MODELS.values())
    TALLY.ended(True, rerun=not done)
