"""kill -9 of each role at each step of a normal and of a fast rollback.

Each case: a VM with pattern 0x41 in its first chunks, snapshotted, then overwritten with
0x42; the rollback runs with one crash point armed on the controller; the killed node is
restarted. A normal rollback is resumed by the controller when it was the one killed, and
otherwise by running the command again (docs/snapshots.md). A fast rollback is abandoned
(before its start tag) or resumed; the VM then writes through NBD while it runs on the
mirror, and ``rollback finish`` must keep that write. Every invariant is checked.
"""

from __future__ import annotations

import pytest

from nodes.client import call_sync
from nodes.config import load_config
from tests.cli.conftest import Deployment
from tests.e2e.processes import runfile
from tests.faults.cases import (
    CHUNK,
    VICTIMS,
    CrashPlan,
    register,
    running_rollback,
    take,
    vm_name,
)
from tests.faults.invariants import DiskModel, Invariants
from tests.faults.network import reap_killed, wait_for
from tests.faults.tally import TALLY

pytestmark = pytest.mark.slow
MODELS: dict[str, DiskModel] = {}
ROLLBACK_STEPS = ["rollback.started", "rollback.restored"]
FAST_START_STEPS = ["fast.started", "fast.tagged", "fast.mirrored"]
FAST_FINISH_STEPS = ["fast.end_tagged", "fast.applied"]
PLAN = CrashPlan(ROLLBACK_STEPS + FAST_START_STEPS + FAST_FINISH_STEPS, list(VICTIMS))


@pytest.fixture(scope="module", autouse=True)
def armed(net: Deployment) -> None:
    """The controller runs with every case's crash point armed."""
    PLAN.arm(net)


def prepared(net: Deployment, point: str, role: str) -> tuple[DiskModel, str]:
    """The case's VM: 0x41 in chunks 0-3, snapshotted, then 0x42 over chunks 0-1."""
    model = register(net, vm_name(point, role), MODELS)
    model.write(net, 0, 4 * CHUNK, 0x41)
    snapshot = take(net, model)
    model.write(net, 0, 2 * CHUNK, 0x42)
    return model, snapshot


def settled(net: Deployment, vm: str, role: str) -> dict[str, object] | None:
    """The VM's running rollback once a restarted controller's recovery has had its turn."""
    if role == "controller":
        wait_for(
            "the controller's recovery",
            lambda: (row := running_rollback(net, vm)) is None or row["phase"] != "started",
        )
    return running_rollback(net, vm)


def serves_mirror(net: Deployment, vm: str) -> bool:
    """True when the business node serves the VM's disk from a fast rollback's mirror."""
    config = load_config(net.config, {})
    run = runfile(net.root, "business-1")
    listed = call_sync(run["host"], run["port"], config.secret(), "volume.list", peer="business-1")
    return any(v["vm"] == vm and v["mirror"] for v in listed["volumes"])


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", ROLLBACK_STEPS)
def test_a_rollback_interrupted_by_kill_9_finishes(
    net: Deployment, invariants: Invariants, point: str, role: str
) -> None:
    model, snapshot = prepared(net, point, role)
    answered = net.run("rollback", "start", model.vm, snapshot, "--json")
    PLAN.restarted(net, point, role)
    if role == "controller":
        wait_for("the resumed rollback", lambda: running_rollback(net, model.vm) is None)
    rerun = running_rollback(net, model.vm) is not None
    if rerun:
        assert answered.exit_code != 0 and answered.output.count("\n") == 1, answered.output
        net.ok("rollback", "start", model.vm, snapshot)
    assert running_rollback(net, model.vm) is None
    model.rolled_back(snapshot)
    TALLY.ended(True, rerun=rerun)
    invariants.check(MODELS.values())


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", FAST_START_STEPS)
def test_a_fast_rollback_interrupted_at_start_is_abandoned_or_keeps_the_vms_writes(
    net: Deployment, invariants: Invariants, point: str, role: str
) -> None:
    model, snapshot = prepared(net, point, role)
    net.run("rollback", "start", model.vm, snapshot, "--fast", "--json")
    PLAN.restarted(net, point, role)
    row = settled(net, model.vm, role)
    if row is None:
        last = net.json("rollback", "status", model.vm)
        assert (last["status"], last["phase"]) == ("abandoned", "abandoned"), last
        TALLY.ended(False)
        invariants.check(MODELS.values())
        return
    wait_for("the VM to run on its mirror", lambda: serves_mirror(net, model.vm))
    model.rolled_back(snapshot)
    model.write(net, 3 * CHUNK, CHUNK // 2, 0x43)
    invariants.acknowledged_writes([model])
    net.ok("rollback", "finish", model.vm)
    assert running_rollback(net, model.vm) is None
    TALLY.ended(True, rerun=True)
    invariants.check(MODELS.values())


@pytest.mark.parametrize("role", list(VICTIMS))
@pytest.mark.parametrize("point", FAST_FINISH_STEPS)
def test_a_fast_rollback_interrupted_while_finishing_keeps_the_vms_writes(
    net: Deployment, invariants: Invariants, point: str, role: str
) -> None:
    model, snapshot = prepared(net, point, role)
    net.ok("rollback", "start", model.vm, snapshot, "--fast")
    model.rolled_back(snapshot)
    model.write(net, 3 * CHUNK, CHUNK // 2, 0x44)
    assert reap_killed(net) == []
    answered = net.run("rollback", "finish", model.vm, "--json")
    PLAN.restarted(net, point, role)
    if role == "controller":
        wait_for("the resumed finish", lambda: running_rollback(net, model.vm) is None)
    rerun = running_rollback(net, model.vm) is not None
    if rerun:
        assert answered.exit_code != 0 and answered.output.count("\n") == 1, answered.output
        net.ok("rollback", "finish", model.vm)
    assert running_rollback(net, model.vm) is None
    TALLY.ended(True, rerun=rerun)
    invariants.check(MODELS.values())
    assert net.json("rollback", "diff", model.vm)["ok"] is True
