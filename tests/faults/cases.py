"""The steps every crash case shares: a fresh VM, an armed crash point, the restart after it."""

from __future__ import annotations

import contextlib
from typing import Any

from nodes.crashpoints import CRASH_ENV
from tests.cli.conftest import Deployment
from tests.faults.invariants import DiskModel
from tests.faults.network import arm_controller, reap_killed, up, wait_for
from tests.faults.tally import TALLY

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 64 * KiB
DISK = 2 * MiB
VICTIMS = {
    "controller": "controller",
    "business": "business-1",
    "transfer": "transfer-1",
    "backup": "backup-1",
}
"""The node of each role a crash point kills (the controller kills itself)."""
SNAPSHOT_STEPS = [
    "snapshot.requested",
    "snapshot.frozen",
    "snapshot.processed",
    "snapshot.committed",
]
"""The crash points of snapshot create, in workflow order."""


def vm_name(point: str, role: str) -> str:
    """Each case's own VM: ``snapshot.frozen`` killing business is ``snapshot-frozen-business``."""
    return f"{point.replace('.', '-').replace('_', '-')}-{role}"


def register(net: Deployment, vm: str, models: dict[str, DiskModel]) -> DiskModel:
    """Register `vm` with one small disk; its model joins `models`."""
    net.ok("vm", "register", vm, "--ip", "10.0.0.9", "--disk", f"system:root:{DISK}")
    models[vm] = DiskModel(vm, DISK)
    return models[vm]


class CrashPlan:
    """The crash points of a module's cases, each scoped to its case's own VM.

    The controller runs with every case's point armed (``POINT:VM@NODE``), so a case whose
    victim is another node needs no controller restart; when the controller is the victim it
    is restarted with the points of the cases still to run.
    """

    def __init__(self, points: list[str], roles: list[str]) -> None:
        self.pending = {(p, r) for p in points for r in roles}

    def spec(self) -> str:
        """The ``VMSNAP_CRASH_AT`` value arming every case still to run."""
        entries = []
        for point, role in sorted(self.pending):
            entry = f"{point}:{vm_name(point, role)}"
            entries.append(entry if role == "controller" else f"{entry}@{VICTIMS[role]}")
        return ",".join(entries)

    def arm(self, net: Deployment) -> None:
        """Restart the controller with every pending case armed."""
        arm_controller(net, self.spec())

    def restarted(self, net: Deployment, point: str, role: str) -> None:
        """After a case's workflow: check its crash point killed only its victim, restart it."""
        self.pending.discard((point, role))
        victim = VICTIMS[role]
        try:
            # The command may answer (or give up waiting) before its node reaches the point.
            with contextlib.suppress(AssertionError):
                wait_for(f"{victim} to die at {point}", lambda: victim in reap_killed(net))
            killed = reap_killed(net)
            assert killed == [victim], f"expected only {victim} killed, found {killed} down"
            TALLY.fault(f"kill -9 {role} at a crash point")
        finally:
            up(net, {CRASH_ENV: self.spec()})


def interrupted_snapshot(
    net: Deployment, model: DiskModel, plan: CrashPlan, point: str, role: str
) -> dict[str, Any]:
    """A snapshot of the VM that `plan` interrupts at `point`: its row once it has settled.

    An acknowledged snapshot must end committed; a failed command says why in one line.
    """
    answered = net.run("snapshot", "create", model.vm, "--json")
    plan.restarted(net, point, role)
    snap = settled_snapshot(net, model.vm)
    if answered.exit_code == 0:
        assert snap["status"] == "committed", "an acknowledged snapshot stays committed"
    else:
        assert answered.output.count("\n") == 1, answered.output
    if snap["status"] == "committed":
        model.snapshot_taken(snap["id"])
    TALLY.ended(snap["status"] == "committed")
    return snap


def take(net: Deployment, model: DiskModel) -> str:
    """A committed snapshot of the VM as it is now; its id."""
    snap = net.json("snapshot", "create", model.vm)
    model.snapshot_taken(snap["id"])
    return str(snap["id"])


def snapshots(net: Deployment, vm: str) -> list[dict[str, Any]]:
    """The VM's snapshots, oldest first."""
    return list(net.json("snapshot", "list", vm))


def settled_snapshot(net: Deployment, vm: str) -> dict[str, Any]:
    """The VM's newest snapshot once recovery has committed and released it, or failed it."""

    def settled() -> bool:
        newest = snapshots(net, vm)[-1]
        return newest["status"] == "failed" or (
            newest["status"] == "committed" and bool(newest["released"])
        )

    wait_for(f"the snapshot of {vm} to settle", settled)
    return snapshots(net, vm)[-1]


def running_rollback(net: Deployment, vm: str) -> dict[str, Any] | None:
    """The VM's rollback in progress, if any."""
    rows = [r for r in net.json("rollback", "list", vm) if r["status"] == "running"]
    return rows[-1] if rows else None
