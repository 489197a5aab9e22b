"""The CLI against a real controller process on loopback."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Deployment

pytestmark = pytest.mark.slow


def _count(network: Deployment) -> int:
    return int(network.json("ledger", "head")["count"])


def test_status_reports_the_controller_up_with_its_address(network: Deployment) -> None:
    row = next(r for r in network.json("status") if r["role"] == "controller")
    assert row["name"] == "controller"
    assert row["role"] == "controller"
    assert row["state"] == "up"
    assert row["host"] == "127.0.0.1"
    assert isinstance(row["port"], int) and row["port"] > 0


def test_up_twice_starts_nothing_new(network: Deployment) -> None:
    result = network.ok("up")
    assert "already running" in result.output


def test_register_records_the_vm_and_its_disks(network: Deployment) -> None:
    network.ok(
        "vm",
        "register",
        "web-01",
        "--type",
        "kvm",
        "--ip",
        "10.0.0.11",
        "--disk",
        "system:root:20G",
        "--disk",
        "data:db:100G",
    )
    shown = network.json("vm", "show", "web-01")
    assert shown["vm"]["ip"] == "10.0.0.11"
    assert {(d["role"], d["resource_id"], d["size"]) for d in shown["vm"]["disks"]} == {
        ("system", "root", 20 << 30),
        ("data", "db", 100 << 30),
    }
    assert [e["type"] for e in shown["events"]] == ["VmRegistered", "DiskPlaced", "DiskPlaced"]
    assert {d["node"] for d in shown["vm"]["disks"]} == {"business-1"}
    assert "web-01" in [vm["name"] for vm in network.json("vm", "list")]


def test_ledger_log_shows_every_event_in_order(network: Deployment) -> None:
    network.ok("vm", "register", "log-01", "--ip", "10.0.0.21", "--disk", "system:root:1G")
    events = network.json("ledger", "log")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "LedgerOpened"
    registered, placed = network.json("ledger", "log", "--vm", "log-01")
    assert registered["type"] == "VmRegistered"
    assert registered["fields"]["vm"] == "log-01"
    assert placed["type"] == "DiskPlaced"
    assert len(network.json("ledger", "log", "--limit", "1")) == 1
    assert "LedgerOpened" in network.ok("ledger", "log").stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--ip", "10.0.0.500", "--disk", "system:root:1G"],
            2,
            "error: invalid IP address '10.0.0.500'",
        ),
        (["--ip", "10.0.0.5", "--disk", "system:root:10Q"], 2, "error: invalid size '10Q'"),
        (["--ip", "10.0.0.5", "--disk", "root:10G"], 2, "error: invalid disk 'root:10G'"),
        (["--ip", "10.0.0.5"], 2, "error: a VM needs at least one disk"),
        (["--ip", "10.0.0.5", "--disk", "swap:s:1G"], 2, "error: invalid disk role 'swap'"),
    ],
)
def test_bad_registration_is_one_line_and_appends_nothing(
    network: Deployment, args: list[str], code: int, message: str
) -> None:
    before = _count(network)
    result = network.run("vm", "register", "bad-01", *args)
    assert result.exit_code == code
    assert result.output.startswith(message)
    assert result.output.count("\n") == 1
    assert _count(network) == before


def test_duplicate_vm_name_is_refused_and_appends_nothing(network: Deployment) -> None:
    network.ok("vm", "register", "dup-01", "--ip", "10.0.0.31", "--disk", "system:root:1G")
    before = _count(network)
    result = network.run("vm", "register", "dup-01", "--ip", "10.0.0.32", "--disk", "system:r:1G")
    assert result.exit_code == 5
    assert result.output == "error: VM 'dup-01' is already registered\n"
    assert _count(network) == before
    assert network.json("vm", "show", "dup-01")["vm"]["ip"] == "10.0.0.31"


def test_unknown_vm_is_one_line(network: Deployment) -> None:
    for args in (["vm", "show", "nope"], ["ledger", "log", "--vm", "nope"]):
        result = network.run(*args)
        assert result.exit_code == 4
        assert result.output == "error: unknown VM 'nope': see vmsnap vm list\n"


def test_ledger_verify_reports_the_head_matches(network: Deployment) -> None:
    result = network.ok("ledger", "verify")
    assert "verified: the head matches the contract" in result.stdout
    report = network.json("ledger", "verify")
    assert report["ok"] is True
    assert report["head"] == report["contract_head"] == network.json("ledger", "head")["head"]
    assert report["projection_matches"] is True


def test_ledger_replay_rebuilds_the_same_projection(network: Deployment) -> None:
    vms_before = network.json("vm", "list")
    log_before = network.json("ledger", "log")
    result = network.json("ledger", "replay")
    assert result["events"] == len(log_before)
    assert network.json("vm", "list") == vms_before
    assert network.json("ledger", "log") == log_before
