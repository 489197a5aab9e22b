"""vmsnap key and init's encryption: the data key by fingerprint, exported and imported."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from nodes.config import load_config
from nodes.data_key import fingerprint, read_key, record_check
from tests.cli.conftest import Deployment, make_deployment

PASSPHRASE = "a long passphrase for the tests"


def _key(deployment: Deployment) -> bytes:
    key = read_key(deployment.root / "data.key")
    assert key is not None
    return key


def _passphrase_file(tmp_path: Path, text: str = PASSPHRASE) -> Path:
    path = tmp_path / "passphrase.txt"
    path.write_text(text + "\n")
    return path


def _export(deployment: Deployment, target: Path, tmp_path: Path) -> None:
    deployment.ok(
        "key", "export", str(target), "--passphrase-file", str(_passphrase_file(tmp_path))
    )


def test_init_turns_encryption_on_and_says_once_that_losing_the_key_loses_the_data(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(app, ["init", "--dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "d" / "vmsnap.toml", {})
    assert config.storage.encryption is True
    key = read_key(tmp_path / "d" / "data.key")
    assert key is not None and fingerprint(key) in result.output
    assert result.output.count("losing it loses every snapshot") == 1
    assert key.hex() not in result.output


def test_init_with_no_encryption_writes_it_off(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", "--dir", str(tmp_path / "d"), "--no-encryption"])
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "d" / "vmsnap.toml", {}).storage.encryption is False
    assert "not encrypted" in result.output


def test_a_config_without_the_encryption_key_keeps_encryption_off(deployment: Deployment) -> None:
    text = deployment.config.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("encryption")]
    deployment.config.write_text("\n".join(lines) + "\n")
    assert load_config(deployment.config, {}).storage.encryption is False


def test_key_show_gives_the_fingerprint_and_never_the_key(deployment: Deployment) -> None:
    key = _key(deployment)
    shown = deployment.json("key", "show")
    assert shown["fingerprint"] == fingerprint(key)
    assert (shown["cipher"], shown["encryption"], shown["exposed"]) == ("AES-256-GCM", True, None)
    assert shown["written_with"] == {"backup-1": None, "backup-2": None, "backup-3": None}
    text = deployment.ok("key", "show").output
    assert fingerprint(key) in text and "encryption    on" in text
    for output in (text, json.dumps(shown)):
        assert key.hex() not in output


def test_an_exported_key_imports_into_a_fresh_deployment(
    deployment: Deployment, tmp_path: Path
) -> None:
    exported = tmp_path / "key.json"
    _export(deployment, exported, tmp_path)
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    assert _key(deployment).hex() not in exported.read_text()
    fresh = make_deployment(tmp_path / "fresh")
    assert _key(fresh) != _key(deployment)
    result = fresh.ok(
        "key", "import", str(exported), "--passphrase-file", str(tmp_path / "passphrase.txt")
    )
    assert f"imported data key {fingerprint(_key(deployment))}" in result.output
    assert _key(fresh) == _key(deployment)
    assert stat.S_IMODE((fresh.root / "data.key").stat().st_mode) == 0o600
    again = fresh.ok(
        "key", "import", str(exported), "--passphrase-file", str(tmp_path / "passphrase.txt")
    )
    assert "already holds" in again.output


def test_the_passphrase_comes_from_the_environment_or_stdin(
    deployment: Deployment, tmp_path: Path
) -> None:
    by_env = tmp_path / "env.json"
    done = deployment.runner.invoke(
        app,
        ["--config", str(deployment.config), "key", "export", str(by_env)],
        env={"VMSNAP_PASSPHRASE": PASSPHRASE},
    )
    assert done.exit_code == 0, done.output
    fresh = make_deployment(tmp_path / "fresh")
    done = fresh.runner.invoke(
        app, ["--config", str(fresh.config), "key", "import", str(by_env)], input=PASSPHRASE + "\n"
    )
    assert done.exit_code == 0, done.output
    assert _key(fresh) == _key(deployment)
    assert PASSPHRASE not in done.output


def test_export_without_any_passphrase_is_refused_and_writes_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    result = deployment.runner.invoke(
        app,
        ["--config", str(deployment.config), "key", "export", str(tmp_path / "k.json")],
        input="",
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: no passphrase")
    assert not (tmp_path / "k.json").exists()


def test_export_refuses_to_overwrite_a_file(deployment: Deployment, tmp_path: Path) -> None:
    target = tmp_path / "key.json"
    target.write_text("precious\n")
    result = deployment.run("key", "export", str(target), "--plain")
    assert result.exit_code == 2
    assert result.output == f"error: {target} already exists\n"
    assert target.read_text() == "precious\n"


def test_a_plain_export_is_explicit_and_imports_without_a_passphrase(
    deployment: Deployment, tmp_path: Path
) -> None:
    target = tmp_path / "plain.json"
    assert "unprotected (--plain)" in deployment.ok("key", "export", str(target), "--plain").output
    fresh = make_deployment(tmp_path / "fresh")
    fresh.ok("key", "import", str(target))
    assert _key(fresh) == _key(deployment)


def test_import_with_a_wrong_passphrase_is_one_line_and_changes_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    exported = tmp_path / "key.json"
    _export(deployment, exported, tmp_path)
    fresh = make_deployment(tmp_path / "fresh")
    before = (fresh.root / "data.key").read_bytes()
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the passphrase\n")
    result = fresh.run("key", "import", str(exported), "--passphrase-file", str(wrong))
    assert result.exit_code == 2
    assert result.output == "error: wrong passphrase for the key file\n"
    assert (fresh.root / "data.key").read_bytes() == before


def test_import_of_a_damaged_file_is_one_line_and_changes_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    exported = tmp_path / "key.json"
    _export(deployment, exported, tmp_path)
    body = json.loads(exported.read_text())
    body["key"] = ("0" if body["key"][0] != "0" else "1") + body["key"][1:]
    exported.write_text(json.dumps(body))
    fresh = make_deployment(tmp_path / "fresh")
    before = (fresh.root / "data.key").read_bytes()
    result = fresh.run(
        "key", "import", str(exported), "--passphrase-file", str(tmp_path / "passphrase.txt")
    )
    assert result.exit_code == 2
    assert (
        result.output
        == "error: the key file is damaged: its checksum does not match its contents\n"
    )
    assert (fresh.root / "data.key").read_bytes() == before


def test_import_refuses_to_replace_a_key_that_data_was_written_with(
    deployment: Deployment, tmp_path: Path
) -> None:
    other = make_deployment(tmp_path / "other")
    exported = tmp_path / "other.json"
    _export(other, exported, tmp_path)
    written = fingerprint(_key(deployment))
    node_dir = deployment.root / "data" / "nodes" / "backup-2"
    node_dir.mkdir(parents=True)
    record_check(node_dir, written)
    before = (deployment.root / "data.key").read_bytes()
    result = deployment.run(
        "key", "import", str(exported), "--passphrase-file", str(tmp_path / "passphrase.txt")
    )
    assert result.exit_code == 5
    assert result.output == (
        f"error: backup-2 holds data written with data key {written}, "
        f"not {fingerprint(_key(other))}: the key was not replaced\n"
    )
    assert (deployment.root / "data.key").read_bytes() == before


def test_import_restores_the_key_the_data_was_written_with_over_another(
    deployment: Deployment, tmp_path: Path
) -> None:
    other = make_deployment(tmp_path / "other")
    exported = tmp_path / "other.json"
    _export(other, exported, tmp_path)
    for node in ("backup-1", "backup-2", "backup-3"):
        node_dir = deployment.root / "data" / "nodes" / node
        node_dir.mkdir(parents=True)
        record_check(node_dir, fingerprint(_key(other)))
    deployment.ok(
        "key", "import", str(exported), "--passphrase-file", str(tmp_path / "passphrase.txt")
    )
    assert _key(deployment) == _key(other)


def test_status_and_key_show_warn_about_a_key_file_others_can_read(
    deployment: Deployment,
) -> None:
    (deployment.root / "data.key").chmod(0o644)
    path = deployment.root / "data.key"
    warning = f"warning: {path} is open to group and others (mode 0644): run chmod 600 {path}"
    for command in (("status",), ("key", "show")):
        result = deployment.ok(*command)
        assert warning in result.output
    assert deployment.json("key", "show")["exposed"] == "open to group and others (mode 0644)"


def test_an_empty_or_missing_passphrase_file_is_refused_and_writes_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    empty = _passphrase_file(tmp_path, "")
    target = tmp_path / "k.json"
    result = deployment.run("key", "export", str(target), "--passphrase-file", str(empty))
    assert result.exit_code == 2
    assert result.output == f"error: the passphrase file {empty} starts with an empty line\n"
    missing = tmp_path / "absent.txt"
    result = deployment.run("key", "export", str(target), "--passphrase-file", str(missing))
    assert result.output == f"error: cannot read the passphrase file {missing}\n"
    assert not target.exists()
