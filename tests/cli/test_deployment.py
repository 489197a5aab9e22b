from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from tests.cli.conftest import Deployment


def test_init_writes_config_secret_and_three_distinct_private_keys(
    deployment: Deployment,
) -> None:
    assert deployment.config.is_file()
    for name in ("secret", "admin.key", "operator.key", "deleter.key"):
        mode = stat.S_IMODE((deployment.root / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    accounts = [deployment.account(role) for role in ("admin", "operator", "deleter")]
    assert len(set(accounts)) == 3
    init_output = deployment.runner.invoke(app, ["init", "--dir", str(deployment.root / "other")])
    assert "deleter account 0x" in init_output.output
    assert len(bytes.fromhex((deployment.root / "secret").read_text().strip())) == 32
    assert (deployment.root / "data" / "run").is_dir()


def test_init_refuses_a_folder_that_holds_a_deployment_and_changes_nothing(
    deployment: Deployment,
) -> None:
    before = {p: p.read_bytes() for p in deployment.root.iterdir() if p.is_file()}
    result = deployment.runner.invoke(app, ["init", "--dir", str(deployment.root)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: a deployment already exists in {deployment.root}"
    assert {p: p.read_bytes() for p in deployment.root.iterdir() if p.is_file()} == before


def test_commands_without_a_running_network_say_how_to_start_one(
    deployment: Deployment,
) -> None:
    for args in (["vm", "list"], ["ledger", "log"], ["ledger", "verify"], ["ledger", "head"]):
        result = deployment.run(*args)
        assert result.exit_code == 3, result.output
        assert result.output == "error: no network running: start one with vmsnap up\n"


def test_status_without_a_network_lists_every_node_down(deployment: Deployment) -> None:
    rows = deployment.json("status")
    assert sorted((r["name"], r["role"]) for r in rows) == [
        ("backup-1", "backup"),
        ("backup-2", "backup"),
        ("backup-3", "backup"),
        ("business-1", "business"),
        ("controller", "controller"),
        ("transfer-1", "transfer"),
    ]
    assert {r["state"] for r in rows} == {"down"}


def test_missing_config_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, CliRunner())
    result = deployment.run("vm", "list")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: no configuration at")


def test_a_bad_config_value_names_the_key(deployment: Deployment) -> None:
    text = deployment.config.read_text().replace("timeout = 30.0", 'timeout = "soon"')
    deployment.config.write_text(text)
    result = deployment.run("status")
    assert result.exit_code == 2
    assert result.output.startswith("error: configuration wire.timeout: expected float")


def test_environment_overrides_the_config_file(deployment: Deployment) -> None:
    result = deployment.runner.invoke(
        app, ["--config", str(deployment.config), "status"], env={"VMSNAP_WIRE_TIMEOUT": "soon"}
    )
    assert result.exit_code == 2
    assert "VMSNAP_WIRE_TIMEOUT" in result.output
