"""The ledger on 5 replicas (2 business + 3 backup nodes), the controller as sequencer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from nodes.client import call_sync
from nodes.config import load_config
from tests.cli.conftest import Deployment, make_deployment
from tests.e2e.processes import kill_node, runfile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = make_deployment(tmp_path_factory.mktemp("replicas") / "deployment")
    config = deployment.config.read_text()
    config = config.replace("replicas = false", "replicas = true", 1)
    config = config.replace("business = 1", "business = 2", 1)
    deployment.config.write_text(config)
    deployment.ok("up")
    try:
        yield deployment
    finally:
        deployment.run("down")


def replicas(net: Deployment) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in net.json("ledger", "nodes")}


def caught_up(net: Deployment, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """The replicas once none is still behind (stragglers are fed in the background)."""
    deadline = time.monotonic() + timeout
    found = replicas(net)
    while any(r["state"] == "behind" for r in found.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = replicas(net)
    return found


def register(net: Deployment, name: str) -> Any:
    return net.run("vm", "register", name, "--ip", "10.0.0.81", "--disk", "system:root:4M")


def vms(net: Deployment) -> set[str]:
    return {v["name"] for v in net.json("vm", "list")}


def test_every_replica_agrees_with_the_sequencer(net: Deployment) -> None:
    assert register(net, "rep-01").exit_code == 0
    found = replicas(net)
    assert set(found) == {"business-1", "business-2", "backup-1", "backup-2", "backup-3"}
    assert {r["state"] for r in found.values()} == {"agreed"}
    assert len({r["head_hash"] for r in found.values()}) == 1
    head = net.json("ledger", "head")
    assert {r["head_hash"] for r in found.values()} == {head["block_hash"]}


def test_verify_node_audits_one_replica_from_its_own_contract(net: Deployment) -> None:
    report = net.json("ledger", "verify", "--node", "backup-2")
    assert report["ok"] is True
    assert report["head"] == report["contract_head"]
    assert report["events"] == net.json("ledger", "head")["count"]
    assert set(report["agrees_with"]) == {"business-1", "business-2", "backup-1", "backup-3"}
    unknown = net.run("ledger", "verify", "--node", "transfer-1")
    assert unknown.exit_code == 2 and "holds no ledger replica" in unknown.output


def test_two_replicas_down_appends_go_on_three_down_they_stop_and_nothing_is_lost(
    net: Deployment,
) -> None:
    kill_node(net.root, "business-2", forget=True)
    kill_node(net.root, "backup-3", forget=True)
    assert register(net, "rep-02").exit_code == 0
    states = {n: r["state"] for n, r in replicas(net).items()}
    assert sorted(states.values()) == ["agreed", "agreed", "agreed", "down", "down"]

    kill_node(net.root, "backup-2", forget=True)
    before = net.json("ledger", "head")
    stopped = register(net, "rep-03")
    assert stopped.exit_code == 6
    assert "only 2 of 5 ledger replicas" in stopped.output
    assert stopped.output.count("\n") == 1
    assert "rep-03" not in vms(net), "an append without a majority is not visible"
    assert net.json("ledger", "head") == before, "the uncommitted block is not the head"

    net.ok("up")
    assert register(net, "rep-04").exit_code == 0
    assert {"rep-02", "rep-03", "rep-04"} <= vms(net), "the held append was committed first"
    found = caught_up(net)
    assert {r["state"] for r in found.values()} == {"agreed"}
    assert {r["lag"] for r in found.values()} == {0}
    assert net.json("ledger", "verify")["ok"] is True


def replica_head(net: Deployment, node: str) -> int:
    """The head block number `node`'s replica reports, asked directly (no sequencer)."""
    run = runfile(net.root, node)
    secret = load_config(net.config, {}).secret()
    answer = call_sync(run["host"], run["port"], secret, "replica.head", peer=node, timeout=10)
    return int(answer["number"])


def test_a_replica_back_while_the_sequencer_is_down_catches_up_from_its_peers(
    net: Deployment,
) -> None:
    kill_node(net.root, "backup-3", forget=True)
    assert register(net, "rep-06").exit_code == 0
    assert register(net, "rep-07").exit_code == 0
    ahead = replica_head(net, "backup-2")
    kill_node(net.root, "controller", forget=True)

    net.ok("up", "backup-3")
    assert not (net.root / "data" / "run" / "controller.json").exists()
    deadline = time.monotonic() + 60
    while replica_head(net, "backup-3") < ahead and time.monotonic() < deadline:
        time.sleep(0.2)
    assert replica_head(net, "backup-3") == ahead, "caught up with no sequencer running"

    net.ok("up")
    found = caught_up(net)
    assert {r["state"] for r in found.values()} == {"agreed"}
    assert {"rep-06", "rep-07"} <= vms(net)


def test_up_with_an_unknown_node_name_is_one_line_and_starts_nothing(net: Deployment) -> None:
    refused = net.run("up", "backup-9")
    assert refused.exit_code == 2
    assert "no node named backup-9" in refused.output
    assert refused.output.count("\n") == 1


def test_a_replica_whose_log_was_altered_is_flagged_and_the_others_go_on(
    net: Deployment,
) -> None:
    kill_node(net.root, "backup-1", forget=True)
    log = net.root / "data" / "nodes" / "backup-1" / "chain" / "transactions.log"
    raw = bytearray(log.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    log.write_bytes(bytes(raw))
    net.ok("up")
    assert register(net, "rep-05").exit_code == 0
    found = replicas(net)
    assert found["backup-1"]["state"] == "diverged"
    assert "cannot open the replica" in found["backup-1"]["problem"]
    others = [r for n, r in found.items() if n != "backup-1"]
    assert {r["state"] for r in others} == {"agreed"}
    assert "rep-05" in vms(net)
    flagged = net.run("ledger", "verify", "--node", "backup-1")
    assert flagged.exit_code == 6 and "cannot open the replica" in flagged.output
    assert net.json("ledger", "verify", "--node", "backup-3")["ok"] is True
