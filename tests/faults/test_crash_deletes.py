"""kill -9 of each role at each step of snapshot delete and retention apply.

As in test_crash_snapshots.py, each case's crash point is armed on the controller; the
killed node is restarted and every invariant checked. A delete interrupted before its
events are recorded leaves the snapshot committed and whole; retention, whose decisions
are on the ledger, finishes when the operator applies it again.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import Deployment
from tests.faults.cases import CHUNK, VICTIMS, CrashPlan, register, snapshots, take, vm_name
from tests.faults.invariants import DiskModel, Invariants
from tests.faults.network import wait_for
from tests.faults.tally import TALLY

pytestmark = pytest.mark.slow
MODELS: dict[str, DiskModel] = {}
DELETE_STEPS = ["delete.cleared", "delete.recorded"]
RETENTION_STEPS = ["retention.decided", "retention.deleted_one"]
PLAN = CrashPlan(DELETE_STEPS + RETENTION_STEPS, list(VICTIMS))


@pytest.fixture(scope="module", autouse=True)
def armed(net: Deployment) -> None:
    """The controller runs with every case's crash point armed."""
    PLAN.arm(net)


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
    assert {statuses[s] for s in taken[:-1]} <= {"deleted", "committed"}
    if answered.exit_code == 0:
        assert {statuses[s] for s in taken[:-1]} == {"deleted"}
    invariants.check(MODELS.values())
    done = all(statuses[s] == "deleted" for s in taken[:-1])
    if not done:
        net.ok("retention", "apply", model.vm, "--keep-last", "1")
        wait_for(
            "retention to finish",
            lambda: (
                [s["status"] for s in snapshots(net, model.vm)]
                == ["deleted", "deleted", "committed"]
            ),
        )
        invariants.check(MODELS.values())
    TALLY.ended(True, rerun=not done)
