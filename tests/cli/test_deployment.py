from __future__ import annotations

import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from nodes.config import load_config
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


def test_init_writes_every_secret_file_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        result = CliRunner().invoke(app, ["init", "--dir", str(tmp_path / "d")])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "d" / "vmsnap.toml", {})
    assert sorted(p.name for p in config.private_files()) == [
        "admin.key",
        "data.key",
        "deleter.key",
        "operator.key",
        "secret",
    ]
    for path in config.private_files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_the_ledger_settings_repr_shows_neither_the_operator_key_nor_the_database_url(
    deployment: Deployment,
) -> None:
    text = deployment.config.read_text()
    url = "postgresql+psycopg://vmsnap:hunter2-password@127.0.0.1/vmsnap"
    deployment.config.write_text(text.replace('\nurl = ""', f'\nurl = "{url}"', 1))
    settings = load_config(deployment.config, {}).ledger_settings()
    key = (deployment.root / "operator.key").read_text().strip().removeprefix("0x")
    assert key not in repr(settings) and "hunter2" not in repr(settings)


def test_a_boolean_setting_is_overridden_from_the_environment(deployment: Deployment) -> None:
    env = {"VMSNAP_STORAGE_ENCRYPTION": "false"}
    assert load_config(deployment.config, {}).storage.encryption is True
    assert load_config(deployment.config, env).storage.encryption is False
    result = deployment.runner.invoke(
        app, ["--config", str(deployment.config), "status"], env={"VMSNAP_CHAIN_REPLICAS": "maybe"}
    )
    assert result.exit_code == 2
    assert (
        result.output == "error: configuration VMSNAP_CHAIN_REPLICAS: 'maybe' is not a boolean:"
        " use true or false\n"
    )
