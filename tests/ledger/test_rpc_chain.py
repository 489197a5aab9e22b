"""The JSON-RPC chain backend against a real node (anvil, started on a loopback port)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import events
from ledger.chain import ChainSettings
from ledger.contract import Entry
from ledger.errors import ChainError, VersionConflict
from ledger.service import Ledger, LedgerSettings
from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
# anvil's first development account, funded on every fresh anvil chain.
ANVIL_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def _anvil() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "anvil"
    return str(local) if local.exists() else shutil.which("anvil")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    binary = require("anvil", "make tools installs npm package @foundry-rs/anvil", _anvil())
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _settings(folder: Path, url: str, cache: Path) -> LedgerSettings:
    return LedgerSettings(
        deployment="rpc-test",
        chain=ChainSettings(backend="rpc", rpc_url=url),
        projection_url=f"sqlite:///{folder / 'projection.sqlite'}",
        state_file=folder / "ledger.json",
        operator_key=ANVIL_KEY,
        contract_cache=cache,
    )


def _registered(name: str) -> events.VmRegistered:
    disks = (events.Disk("system", "root", 1 << 30),)
    return events.VmRegistered(at_ms=1, vm=name, vm_type="kvm", ip="10.0.0.1", disks=disks)


def test_ledger_on_anvil_appends_refuses_conflicts_verifies_and_reattaches(
    anvil_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, anvil_url, tmp_path / "cache")
    ledger = Ledger.open(settings)
    try:
        assert ledger.chain.backend == "rpc"
        ledger.append([Entry(_registered("a"), 0), Entry(_registered("b"), 0)])
        with pytest.raises(VersionConflict):
            ledger.append([Entry(_registered("a"), 0)])
        assert ledger.contract.count() == 3
        report, fresh = ledger.verify()
        fresh.close()
        assert report.ok, report.problems
        head = ledger.head()
    finally:
        ledger.close()
    reopened = Ledger.open(settings)
    try:
        assert reopened.head() == head
        assert [vm["name"] for vm in reopened.projection.vms()] == ["a", "b"]
    finally:
        reopened.close()


def test_unreachable_rpc_url_is_a_chain_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ChainError, match="cannot reach the chain"):
        Ledger.open(_settings(tmp_path, url, tmp_path / "cache"))
