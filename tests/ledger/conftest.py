from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

import contracts
from contracts import CompiledContract
from ledger.chain import ChainSettings, open_chain
from ledger.contract import LedgerContract
from ledger.service import Ledger, LedgerSettings
from ledger.tester_chain import EmbeddedChain
from tests.postgres import PostgresServer

GENESIS = 1_767_225_600
NOW = GENESIS + 3_600


def fixed_clock() -> float:
    """The controller's clock in these tests: one hour after genesis, always."""
    return float(NOW)


def account(label: str) -> LocalAccount:
    """A reproducible account named by `label`."""
    key: LocalAccount = Account.from_key(keccak(text=f"vmsnap-test/{label}"))
    return key


@pytest.fixture
def clock() -> Callable[[], float]:
    return fixed_clock


@pytest.fixture(scope="session")
def contract_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contracts")


@pytest.fixture(scope="session")
def compiled(contract_cache: Path) -> CompiledContract:
    return contracts.load(cache_dir=contract_cache)


@pytest.fixture(scope="session")
def admin() -> LocalAccount:
    return account("admin")


@pytest.fixture(scope="session")
def operator() -> LocalAccount:
    return account("operator")


@pytest.fixture(scope="session")
def outsider() -> LocalAccount:
    return account("outsider")


@pytest.fixture
def chain_settings(
    tmp_path: Path, admin: LocalAccount, operator: LocalAccount, outsider: LocalAccount
) -> ChainSettings:
    return ChainSettings(
        data_dir=tmp_path / "chain",
        funded=(admin.address, operator.address, outsider.address),
        genesis_timestamp=GENESIS,
    )


@pytest.fixture
def chain(chain_settings: ChainSettings) -> Iterator[EmbeddedChain]:
    opened = open_chain(chain_settings, fixed_clock)
    assert isinstance(opened, EmbeddedChain)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def ledger_contract(
    chain: EmbeddedChain, compiled: CompiledContract, admin: LocalAccount
) -> LedgerContract:
    deployed, _receipt = LedgerContract.deploy(chain, compiled, admin)
    return deployed


@pytest.fixture(params=["sqlite", "postgresql"])
def projection_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Fresh projection databases by name: SQLite in the test's folder, or on PostgreSQL."""
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path / name}.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres")
    return lambda _name: server.database()


@pytest.fixture
def projection_url(projection_urls: Callable[[str], str]) -> str:
    """The ledger's projection database."""
    return projection_urls("projection")


@pytest.fixture
def ledger_settings(
    tmp_path: Path,
    chain_settings: ChainSettings,
    admin: LocalAccount,
    contract_cache: Path,
    projection_url: str,
) -> LedgerSettings:
    return LedgerSettings(
        deployment="test-site",
        chain=chain_settings,
        projection_url=projection_url,
        state_file=tmp_path / "ledger-state.json",
        operator_key=admin.key.hex(),
        contract_cache=contract_cache,
    )


@pytest.fixture
def ledger(ledger_settings: LedgerSettings) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_settings, fixed_clock)
    try:
        yield opened
    finally:
        opened.close()
