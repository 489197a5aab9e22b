"""Secrets stay secret: a whole deployment's life leaves none in logs, run files or output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from nodes.data_key import generate, write_key
from tests.cli.conftest import Deployment
from tests.e2e.processes import runfile
from tests.e2e.qemu import qemu_io

pytestmark = pytest.mark.slow
PASSPHRASE = "passphrase that no node process may see"


def forms(path: Path) -> dict[str, bytes]:
    """A hex secret file's value in every form it could leak in: hex either case, raw."""
    text = path.read_text().strip().removeprefix("0x")
    raw = bytes.fromhex(text)
    return {
        f"{path.name} hex": text.lower().encode(),
        f"{path.name} HEX": text.upper().encode(),
        f"{path.name} raw": raw,
        f"{path.name} repr": repr(raw)[2:-1].encode(),
    }


class Transcript:
    """Every command run on a deployment, with what it printed."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.outputs: list[tuple[str, str]] = []

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = self.deployment.runner.invoke(
            app, ["--config", str(self.deployment.config), *args], env=env
        )
        self.outputs.append((" ".join(args), result.output))
        return result

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = self.run(*args, env=env)
        assert result.exit_code == 0, result.output
        return result


def test_no_secret_or_key_appears_in_logs_run_files_or_output(tmp_path: Path) -> None:
    root = tmp_path / "deployment"
    init = CliRunner().invoke(app, ["init", "--dir", str(root)])
    assert init.exit_code == 0, init.output
    log = Transcript(Deployment(root, CliRunner()))
    log.outputs.append(("init", init.output))
    secrets: dict[str, bytes] = {}
    for name in ("secret", "admin.key", "operator.key", "deleter.key", "data.key"):
        secrets.update(forms(root / name))
    passphrase_file = tmp_path / "passphrase.txt"
    passphrase_file.write_text(PASSPHRASE + "\n")
    secrets["passphrase"] = PASSPHRASE.encode()
    log.ok("up", env={"VMSNAP_PASSPHRASE": PASSPHRASE})
    try:
        environ = Path(f"/proc/{runfile(root, 'controller')['pid']}/environ").read_bytes()
        assert PASSPHRASE.encode() not in environ, "node processes never get the passphrase"
        _lifecycle(log, tmp_path, passphrase_file)
        _failures(log, tmp_path)
        runs = {p: p.read_bytes() for p in sorted((root / "data" / "run").glob("*.json"))}
    finally:
        log.run("down")
    assert len(runs) == 6, "every node's run file, read while it ran"
    outputs = "\n".join(f"$ {command}\n{output}" for command, output in log.outputs)
    assert "Traceback" not in outputs
    files = {p: p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}
    assert len([p for p in files if p.parent.name == "logs"]) >= 6
    for name, value in secrets.items():
        assert value not in outputs.encode(), f"the {name} appears in the CLI output"
        for path, body in {**files, **runs}.items():
            assert value not in body, f"the {name} appears in {path}"


def _lifecycle(log: Transcript, tmp_path: Path, passphrase_file: Path) -> None:
    """The commands of a working day, --json ones included."""
    log.ok("status")
    log.ok("status", "--json")
    log.ok("key", "show")
    log.ok("key", "show", "--json")
    log.ok("vm", "register", "web-01", "--ip", "10.0.0.81", "--disk", "system:root:8M")
    url = log.ok("disk", "url", "web-01", "root").stdout.strip()
    qemu_io(url, "write -P 0x5a 0 1M", "flush")
    log.ok("snapshot", "create", "web-01", "--json")
    log.ok("snapshot", "list", "--json")
    log.ok("ledger", "log", "--json")
    log.ok("key", "export", str(tmp_path / "key.json"), "--passphrase-file", str(passphrase_file))


def _failures(log: Transcript, tmp_path: Path) -> None:
    """Commands that fail on a wrong secret, a wrong or malformed data key, a wrong passphrase."""
    root = log.deployment.root
    (snap,) = [s["id"] for s in json.loads(log.ok("snapshot", "list", "--json").stdout)]
    good = {name: (root / name).read_bytes() for name in ("secret", "data.key")}
    try:
        (root / "secret").write_text(generate().hex() + "\n")
        assert log.run("vm", "list").exit_code == 3
        (root / "secret").write_bytes(good["secret"])
        write_key(root / "data.key", generate(), replace=True)
        export = ("disk", "export", "web-01", "root", str(tmp_path / "out.raw"), "--snapshot", snap)
        wrong_key = log.run(*export)
        assert wrong_key.exit_code == 3, wrong_key.output
        assert "authentication failed (tampered or wrong key)" in wrong_key.output
        (root / "data.key").write_bytes(good["data.key"].strip() + b"zz\n")
        assert log.run(*export).exit_code == 2
    finally:
        for name, body in good.items():
            (root / name).write_bytes(body)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the passphrase\n")
    refused = log.run("key", "import", str(tmp_path / "key.json"), "--passphrase-file", str(wrong))
    assert refused.exit_code == 2
    assert json.loads(log.ok("snapshot", "verify", snap, "--json").stdout)["ok"] is True
