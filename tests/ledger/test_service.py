from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eth_account.signers.local import LocalAccount
from sqlalchemy import create_engine, make_url, text

from ledger import events, vm
from ledger.chain import ChainSettings
from ledger.contract import Entry
from ledger.errors import InputError, LedgerCorrupted
from ledger.service import Ledger, LedgerSettings
from ledger.tables import Base
from tests.anvil import fund
from tests.ledger.conftest import GENESIS

ROOT = events.Disk("system", "root", 20 << 30)
Clock = Callable[[], float]


@pytest.fixture(params=["eth-tester", "anvil"])
def chain_settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    admin: LocalAccount,
    operator: LocalAccount,
    outsider: LocalAccount,
) -> ChainSettings:
    """The service's behaviour holds on the embedded chain and on a real JSON-RPC node."""
    if request.param == "eth-tester":
        return embedded(tmp_path, admin, operator, outsider)
    url: str = request.getfixturevalue("anvil")
    fund(url, admin.address)
    return ChainSettings(backend="rpc", rpc_url=url)


def embedded(
    tmp_path: Path, admin: LocalAccount, operator: LocalAccount, outsider: LocalAccount
) -> ChainSettings:
    return ChainSettings(
        data_dir=tmp_path / "chain",
        funded=(admin.address, operator.address, outsider.address),
        genesis_timestamp=GENESIS,
    )


@pytest.fixture
def embedded_settings(
    tmp_path: Path,
    admin: LocalAccount,
    operator: LocalAccount,
    outsider: LocalAccount,
    contract_cache: Path,
    projection_url: str,
) -> LedgerSettings:
    """Settings on the embedded chain, for what only a chain this process hosts can do."""
    return LedgerSettings(
        deployment="test-site",
        chain=embedded(tmp_path, admin, operator, outsider),
        projection_url=projection_url,
        state_file=tmp_path / "ledger-state.json",
        operator_key=admin.key.hex(),
        contract_cache=contract_cache,
    )


def register(ledger: Ledger, name: str, ip: str = "10.0.0.1") -> None:
    event = vm.registration(name, "kvm", ip, [ROOT], at_ms=ledger.now_ms())
    ledger.append([Entry(event, ledger.projection.stream_version(event.stream))])


def projection_file(settings: LedgerSettings) -> Path:
    return Path(settings.projection_url.removeprefix("sqlite:///"))


def on_sqlite(settings: LedgerSettings) -> bool:
    return settings.projection_url.startswith("sqlite:")


def remove_projection(settings: LedgerSettings) -> None:
    """Delete the projection: the SQLite file with its WAL companions, or every table."""
    if on_sqlite(settings):
        main = projection_file(settings)
        for path in (main, main.with_name(main.name + "-wal"), main.with_name(main.name + "-shm")):
            path.unlink(missing_ok=True)
        return
    engine = create_engine(settings.projection_url)
    Base.metadata.drop_all(engine)
    engine.dispose()


def tamper(settings: LedgerSettings, statement: str) -> None:
    """Change the projection behind the ledger's back."""
    engine = create_engine(settings.projection_url)
    with engine.begin() as db:
        db.execute(text(statement))
    engine.dispose()


def save_projection(settings: LedgerSettings, folder: Path) -> str:
    """A copy of the projection as it is now (a file, or a PostgreSQL template database)."""
    if on_sqlite(settings):
        saved = folder / "projection-before.sqlite"
        shutil.copy(projection_file(settings), saved)
        return str(saved)
    name = settings.projection_url.rsplit("/", 1)[1]
    with _admin(settings) as admin:
        admin.execute(f'CREATE DATABASE "{name}_saved" TEMPLATE "{name}"')
    return f"{name}_saved"


def restore_projection(settings: LedgerSettings, saved: str) -> None:
    """Put a saved copy back in place of the projection."""
    if on_sqlite(settings):
        remove_projection(settings)
        shutil.copy(saved, projection_file(settings))
        return
    name = settings.projection_url.rsplit("/", 1)[1]
    with _admin(settings) as admin:
        admin.execute(f'DROP DATABASE "{name}"')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{saved}"')


def _admin(settings: LedgerSettings) -> psycopg.Connection[Any]:
    url = make_url(settings.projection_url)
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True
    )


def snapshot_of(ledger: Ledger) -> tuple[object, ...]:
    return (
        ledger.contract.address_hex,
        ledger.head(),
        ledger.contract.count(),
        ledger.projection.dump(),
    )


def test_open_deploys_the_contract_and_records_that_the_ledger_opened(
    ledger: Ledger, ledger_settings: LedgerSettings, admin: LocalAccount, clock: Clock
) -> None:
    (record,) = ledger.records()

    assert record.event == events.LedgerOpened(
        at_ms=int(clock() * 1000),
        deployment="test-site",
        contract=ledger.contract.address_hex,
        chain_id=ledger.chain.chain_id,
    )
    assert ledger.contract.admin() == admin.address
    assert json.loads(ledger_settings.state_file.read_text()) == {
        "contract": ledger.contract.address_hex,
        "block": ledger.deploy_block,
        "deployed": True,
    }
    assert [e["type"] for e in ledger.projection.events()] == ["LedgerOpened"]


def test_append_goes_to_the_contract_and_into_the_projection(ledger: Ledger) -> None:
    register(ledger, "web", "10.0.0.7")

    assert ledger.contract.count() == 2
    assert ledger.contract.stream_version("vm/web") == 1
    web = ledger.projection.vm("web")
    assert web is not None
    assert web["ip"] == "10.0.0.7"
    assert ledger.projection.checkpoint()[0] == 2


def test_head_describes_the_contract_and_the_latest_block(ledger: Ledger) -> None:
    register(ledger, "web")
    block = ledger.chain.head()

    assert ledger.head() == {
        "contract": ledger.contract.address_hex,
        "count": 2,
        "head": "0x" + ledger.contract.head().hex(),
        "chain_id": ledger.chain.chain_id,
        "backend": ledger.chain.backend,
        "block": block.number,
        "block_hash": "0x" + block.hash.hex(),
        "block_timestamp": block.timestamp,
    }


def test_reopened_ledger_attaches_to_the_same_contract_without_new_blocks(
    ledger_settings: LedgerSettings, clock: Clock
) -> None:
    with closing(Ledger.open(ledger_settings, clock)) as ledger:
        register(ledger, "web")
        register(ledger, "db")
        before = snapshot_of(ledger)

    with closing(Ledger.open(ledger_settings, clock)) as reopened:
        assert snapshot_of(reopened) == before
        assert reopened.catch_up() == 0


def test_replay_rebuilds_the_same_projection(ledger: Ledger) -> None:
    register(ledger, "web")
    register(ledger, "db")
    live = ledger.projection.dump()

    assert ledger.replay() == 3
    assert ledger.projection.dump() == live


def test_verify_of_an_untouched_ledger_is_ok(ledger: Ledger) -> None:
    register(ledger, "web")

    report, fresh = ledger.verify()
    fresh.close()

    assert report.ok, report.problems
    assert report.projection_matches is True
    assert report.events == 2


def test_verify_reports_a_projection_that_differs_from_a_replay(
    ledger: Ledger, ledger_settings: LedgerSettings
) -> None:
    register(ledger, "web")
    tamper(ledger_settings, "UPDATE vms SET ip = '10.6.6.6' WHERE name = 'web'")

    report, fresh = ledger.verify()
    fresh.close()

    assert report.projection_matches is False
    assert report.problems == ["the projection differs from a fresh replay of the ledger"]


def test_catch_up_folds_events_another_client_appended(ledger: Ledger) -> None:
    event = vm.registration("web", "kvm", "10.0.0.1", [ROOT], at_ms=1)
    ledger.contract.append([Entry(event, 0)])
    assert ledger.projection.vm("web") is None

    assert ledger.catch_up() == 1
    assert ledger.projection.vm("web") is not None
    assert ledger.catch_up() == 0


def test_lost_projection_is_rebuilt_on_open(ledger_settings: LedgerSettings, clock: Clock) -> None:
    with closing(Ledger.open(ledger_settings, clock)) as ledger:
        register(ledger, "web")
        before = snapshot_of(ledger)
    remove_projection(ledger_settings)

    with closing(Ledger.open(ledger_settings, clock)) as reopened:
        assert snapshot_of(reopened) == before


def test_projection_missing_its_last_transaction_catches_up_on_open(
    ledger_settings: LedgerSettings, clock: Clock, tmp_path: Path
) -> None:
    with closing(Ledger.open(ledger_settings, clock)) as ledger:
        register(ledger, "web")
    saved = save_projection(ledger_settings, tmp_path)
    with closing(Ledger.open(ledger_settings, clock)) as ledger:
        register(ledger, "db")
        before = snapshot_of(ledger)
    restore_projection(ledger_settings, saved)

    with closing(Ledger.open(ledger_settings, clock)) as reopened:
        assert snapshot_of(reopened) == before
        assert reopened.projection.vm("db") is not None


def test_ledger_survives_the_loss_of_the_chain_state_database(
    embedded_settings: LedgerSettings, clock: Clock
) -> None:
    with closing(Ledger.open(embedded_settings, clock)) as ledger:
        register(ledger, "web")
        before = snapshot_of(ledger)
    assert embedded_settings.chain.data_dir is not None
    for path in embedded_settings.chain.data_dir.glob("evm-state.sqlite*"):
        path.unlink()

    with closing(Ledger.open(embedded_settings, clock)) as reopened:
        assert snapshot_of(reopened) == before


def test_deploy_interrupted_before_it_was_mined_is_redone_at_the_predicted_address(
    embedded_settings: LedgerSettings, clock: Clock, tmp_path: Path
) -> None:
    with closing(Ledger.open(embedded_settings, clock)) as first:
        address = first.contract.address_hex
    shutil.rmtree(tmp_path / "chain")
    remove_projection(embedded_settings)
    embedded_settings.state_file.write_text(
        json.dumps({"contract": address, "block": 0, "deployed": False})
    )

    with closing(Ledger.open(embedded_settings, clock)) as ledger:
        assert ledger.contract.address_hex == address
        assert ledger.contract.count() == 1
    assert json.loads(embedded_settings.state_file.read_text())["deployed"] is True


def test_deploy_mined_but_not_yet_noted_is_attached_without_a_redeploy(
    ledger_settings: LedgerSettings, clock: Clock
) -> None:
    with closing(Ledger.open(ledger_settings, clock)) as first:
        before = snapshot_of(first)
        state = json.loads(ledger_settings.state_file.read_text())
    ledger_settings.state_file.write_text(json.dumps({**state, "deployed": False}))

    with closing(Ledger.open(ledger_settings, clock)) as ledger:
        assert snapshot_of(ledger) == before
    assert json.loads(ledger_settings.state_file.read_text())["deployed"] is True


def test_configured_contract_address_is_attached_to(
    ledger_settings: LedgerSettings, clock: Clock, tmp_path: Path
) -> None:
    with closing(Ledger.open(ledger_settings, clock)) as first:
        register(first, "web")
        before = snapshot_of(first)
    attached = dataclasses.replace(
        ledger_settings,
        contract_address=str(before[0]),
        state_file=tmp_path / "elsewhere" / "state.json",
        projection_url=f"sqlite:///{tmp_path / 'elsewhere.sqlite'}",
    )

    with closing(Ledger.open(attached, clock)) as ledger:
        assert snapshot_of(ledger) == before


def test_state_file_that_is_not_json_is_refused(
    ledger_settings: LedgerSettings, clock: Clock
) -> None:
    ledger_settings.state_file.write_text("{not json")

    with pytest.raises(LedgerCorrupted) as caught:
        Ledger.open(ledger_settings, clock).close()

    assert str(ledger_settings.state_file) in caught.value.message


@pytest.mark.parametrize("key", ["", "0x1234", "zz" * 32, "00" * 32])
def test_invalid_operator_key_is_an_input_error(
    ledger_settings: LedgerSettings, clock: Clock, key: str
) -> None:
    with pytest.raises(InputError) as caught:
        Ledger.open(dataclasses.replace(ledger_settings, operator_key=key), clock).close()

    assert caught.value.message == "the operator key is not a valid private key"
