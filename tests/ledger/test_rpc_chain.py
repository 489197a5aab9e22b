"""The JSON-RPC chain backend against a real node (anvil, started on a loopback port)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import events
from ledger.chain import ChainSettings
from ledger.contract import Entry
from ledger.errors import ChainError, VersionConflict
from ledger.service import Ledger, LedgerSettings
from tests.anvil import ANVIL_KEY, free_port


@pytest.fixture
def anvil_url(anvil: str) -> str:
    return anvil


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
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainError, match="cannot reach the chain"):
        Ledger.open(_settings(tmp_path, url, tmp_path / "cache"))
