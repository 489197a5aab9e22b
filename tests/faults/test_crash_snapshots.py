"""kill -9 of each role at each step of snapshot create.

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

pytestmark = pytest.mark.slow
MODELS: dict[str, DiskModel] = {}
PLAN = CrashPlan(SNAPSHOT_STEPS, list(VICTIMS))


@pytest.fixture(scope="module", autouse=True)
def armed(net: Deployment) -> None:
    """The controller runs with every case's crash point armed."""
    PLAN.arm(net)


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", SNAPSHOT_STEPS)
def test_a_snapshot_interrupted_by_kill_9_is_committed_or_undone(
    net: Deployment, invariants: Invariants, point: str, role: str
) -> None:
    model = register(net, vm_name(point, role), MODELS)
    model.write(net, 0, 4 * CHUNK, 0x11)
    interrupted_snapshot(net, model, PLAN, point, role)
    invariants.check(MODELS.values())
    model.write(net, 8 * CHUNK, CHUNK, 0x12)
    take(net, model)
    assert [s["status"] for s in snapshots(net, model.vm)][-1] == "committed"
