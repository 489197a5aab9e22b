"""Who signs what on a running network: the operator snapshots, the deleter deletes, the admin
grants; a controller without the deleter key refuses deletions and changes nothing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Deployment, make_deployment, running
from tests.ledger.conftest import account

pytestmark = pytest.mark.slow
VM = "acl-01"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running(tmp_path_factory.mktemp("access") / "deployment") as deployment:
        deployment.ok("vm", "register", VM, "--ip", "10.0.0.61", "--disk", "system:root:4M")
        yield deployment


@contextlib.contextmanager
def without_keys(net: Deployment, *roles: str) -> Iterator[None]:
    """The network restarted by someone who does not hold the `roles` key files."""
    net.ok("down")
    aside = {role: net.root / f"{role}.key.aside" for role in roles}
    for role, path in aside.items():
        (net.root / f"{role}.key").rename(path)
    try:
        net.ok("up")
        yield
    finally:
        net.ok("down")
        for role, path in aside.items():
            path.rename(net.root / f"{role}.key")
        net.ok("up")


def count(net: Deployment) -> int:
    return int(net.json("ledger", "head")["count"])


def status_of(net: Deployment, snapshot: str) -> str:
    return str(next(s["status"] for s in net.json("snapshot", "list", VM) if s["id"] == snapshot))


def one_line_error(result: Any, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ")
    return str(result.output)


def test_access_list_shows_admin_operator_and_deleter_with_their_roles(net: Deployment) -> None:
    rows = {r["account"]: r for r in net.json("access", "list")}

    assert rows[net.account("admin")]["admin"] is True
    assert rows[net.account("operator")]["roles"] == ["operator"]
    assert rows[net.account("operator")]["signs_here_as"] == "operator"
    assert rows[net.account("deleter")]["roles"] == ["operator", "deleter"]
    assert rows[net.account("deleter")]["signs_here_as"] == "deleter"
    assert net.account("operator") in net.ok("access", "list").stdout


def test_snapshot_is_signed_by_the_operator_and_its_deletion_by_the_deleter(
    net: Deployment,
) -> None:
    taken = net.json("snapshot", "create", VM)
    net.ok("snapshot", "delete", taken["id"])

    history = [e for e in net.json("ledger", "log", "--vm", VM) if e["fields"].get("snapshot")]
    signers = {e["type"]: e["sender"] for e in history if e["fields"]["snapshot"] == taken["id"]}
    assert signers["SnapshotRequested"] == net.account("operator")
    assert signers["SnapshotCommitted"] == net.account("operator")
    assert signers["TargetSnapshotDeleted"] == net.account("deleter")
    audited = net.run("audit", "snapshot", taken["id"], "--json")
    record = json.loads(audited.stdout)["contract"]
    assert (record["status"], record["updated_by"]) == ("deleted", net.account("deleter"))
    assert record["root"] == "0x" + taken["root"].removeprefix("0x")


def test_controller_without_the_deleter_key_refuses_delete_and_retention_cleanly(
    net: Deployment,
) -> None:
    kept = net.json("snapshot", "create", VM)["id"]
    other = net.json("snapshot", "create", VM)["id"]
    with without_keys(net, "deleter"):
        before = count(net)

        refused = one_line_error(net.run("snapshot", "delete", kept), 6)
        retention = one_line_error(net.run("retention", "apply", VM, "--keep-last", "1"), 6)

        assert "needs the deleter key (deployment.deleter_key_file)" in refused
        assert "nothing was changed" in retention
        assert count(net) == before
        assert (status_of(net, kept), status_of(net, other)) == ("committed", "committed")
        assert net.json("snapshot", "verify", kept)["ok"] is True
        assert net.json("retention", "apply", VM, "--keep-last", "1", "--dry-run")["deleted"] == []
    net.ok("snapshot", "delete", kept)
    assert status_of(net, kept) == "deleted"


def test_the_admin_grants_and_revokes_roles(net: Deployment) -> None:
    newcomer = account("newcomer").address

    granted = net.json("access", "grant", newcomer, "--role", "deleter")
    assert granted["roles"] == ["operator", "deleter"]
    assert granted["funded_wei"] == str(1_000 * 10**18)
    rows = {r["account"]: r for r in net.json("access", "list")}
    assert rows[newcomer]["changed_by"] == net.account("admin")

    again = net.ok("access", "grant", newcomer, "--role", "operator").stdout
    assert again.strip() == f"{newcomer}: operator"
    revoked = net.json("access", "revoke", newcomer)
    assert revoked["roles"] == []
    assert {r["account"]: r["roles"] for r in net.json("access", "list")}[newcomer] == []


def test_a_revoked_deleter_is_refused_before_anything_is_deleted(net: Deployment) -> None:
    snapshot = net.json("snapshot", "create", VM)["id"]
    net.ok("access", "revoke", net.account("deleter"))
    try:
        before = count(net)
        refused = one_line_error(net.run("snapshot", "delete", snapshot), 6)
        assert f"account {net.account('deleter')} is not allowed" in refused
        assert count(net) == before
        assert status_of(net, snapshot) == "committed"
    finally:
        net.ok("access", "grant", net.account("deleter"), "--role", "deleter")
    net.ok("snapshot", "delete", snapshot)


def test_granting_without_the_admin_key_is_refused_in_one_line(net: Deployment) -> None:
    newcomer = account("latecomer").address
    with without_keys(net, "admin"):
        refused = one_line_error(net.run("access", "grant", newcomer, "--role", "operator"), 6)
        assert "needs the admin key (deployment.admin_key_file)" in refused
        assert net.json("snapshot", "create", VM)["status"] == "committed"
    assert newcomer not in {r["account"] for r in net.json("access", "list")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grant", "0x12", "--role", "operator"], "'0x12' is not an account address"),
        (["grant", "0x" + "ab" * 20, "--role", "king"], "unknown role 'king'"),
        (["revoke", "nobody"], "'nobody' is not an account address"),
    ],
)
def test_bad_access_input_is_one_line_and_changes_nothing(
    net: Deployment, args: list[str], message: str
) -> None:
    before = net.json("access", "list")

    refused = one_line_error(net.run("access", *args), 2)

    assert message in refused
    assert net.json("access", "list") == before


def test_a_one_key_deployment_works_as_before(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "one-key")
    text = deployment.config.read_text()
    for line in text.splitlines():
        if line.startswith(("admin_key_file", "deleter_key_file", "funded = ")):
            text = text.replace(line + "\n", "")
    deployment.config.write_text(text)
    (deployment.root / "admin.key").unlink()
    (deployment.root / "deleter.key").unlink()
    deployment.ok("up")
    try:
        deployment.ok("vm", "register", VM, "--ip", "10.0.0.62", "--disk", "system:root:4M")
        taken = deployment.json("snapshot", "create", VM)
        deployment.ok("snapshot", "delete", taken["id"])
        senders = {e["sender"] for e in deployment.json("ledger", "log")}
        rows = deployment.json("access", "list")
    finally:
        deployment.run("down")
    assert senders == {deployment.account("operator")}
    assert [(r["account"], r["roles"], r["admin"]) for r in rows] == [
        (deployment.account("operator"), ["operator", "deleter"], True)
    ]
