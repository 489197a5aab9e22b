"""Who may do what: a ledger opened with separate admin, operator and deleter keys.

Each test runs on the embedded chain and on anvil.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ledger import access, events, vm
from ledger.chain import ChainSettings
from ledger.contract import (
    ROLE_ALL,
    ROLE_OPERATOR,
    Entry,
    Fact,
    LedgerContract,
    SnapshotStatus,
)
from ledger.errors import InputError, KeyNotHeld, Unauthorised
from ledger.service import Ledger, LedgerSettings
from tests.anvil import fund
from tests.ledger.conftest import GENESIS, account

ROOT = events.Disk("system", "root", 20 << 30)
MERKLE = "ab" * 32
Clock = Callable[[], float]


@pytest.fixture(scope="session")
def deleter() -> LocalAccount:
    return account("deleter")


@pytest.fixture(params=["eth-tester", "anvil"])
def chain_settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    admin: LocalAccount,
    operator: LocalAccount,
    deleter: LocalAccount,
    outsider: LocalAccount,
) -> ChainSettings:
    """The three keys behave the same on the embedded chain and on a real JSON-RPC node."""
    everyone = (admin.address, operator.address, deleter.address, outsider.address)
    if request.param == "eth-tester":
        return ChainSettings(
            data_dir=tmp_path / "chain", funded=everyone, genesis_timestamp=GENESIS
        )
    url: str = request.getfixturevalue("anvil")
    fund(url, *everyone)
    fund(url, admin.address, wei=10**24)  # as rich as the embedded genesis makes it, nearly
    return ChainSettings(backend="rpc", rpc_url=url)


@pytest.fixture
def ledger_settings(
    tmp_path: Path,
    chain_settings: ChainSettings,
    admin: LocalAccount,
    operator: LocalAccount,
    deleter: LocalAccount,
    contract_cache: Path,
) -> LedgerSettings:
    """A deployment with three keys, every one of them held by this process."""
    return LedgerSettings(
        deployment="test-site",
        chain=chain_settings,
        projection_url=f"sqlite:///{tmp_path / 'projection.sqlite'}",
        state_file=tmp_path / "ledger-state.json",
        operator_key=operator.key.hex(),
        contract_cache=contract_cache,
        admin_key=admin.key.hex(),
        deleter_key=deleter.key.hex(),
    )


@pytest.fixture
def ledger(ledger_settings: LedgerSettings, clock: Clock) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_settings, clock)
    try:
        yield opened
    finally:
        opened.close()


def reopen(settings: LedgerSettings, clock: Clock, **keys: str | None) -> Ledger:
    """The same deployment, opened by a process holding other keys."""
    return Ledger.open(dataclasses.replace(settings, **keys), clock)


def committed_snapshot(ledger: Ledger, label: str = "one") -> str:
    """Register VM web (once) and commit a snapshot of it; return the snapshot id."""
    stream = events.vm_stream("web")
    if ledger.projection.vm("web") is None:
        event = vm.registration("web", "kvm", "10.0.0.1", [ROOT], at_ms=ledger.now_ms())
        ledger.append([Entry(event, 0)])
    snap = keccak(text=f"snapshot/{label}")
    version = ledger.projection.stream_version(stream)
    now = ledger.now_ms()
    ledger.append(
        [
            Entry(
                events.SnapshotRequested(now, snap.hex(), "web", ("root",), None),
                version,
                Fact(snap, SnapshotStatus.PENDING),
            ),
            Entry(
                events.SnapshotCommitted(now, snap.hex(), "web", MERKLE),
                version + 1,
                Fact(snap, SnapshotStatus.COMMITTED, bytes.fromhex(MERKLE)),
            ),
        ]
    )
    return snap.hex()


def deletion(ledger: Ledger, snapshot: str, status: SnapshotStatus) -> list[Entry]:
    """The delete workflow's three events for `snapshot`, the last marking it `status`."""
    version = ledger.projection.stream_version(events.vm_stream("web"))
    now = ledger.now_ms()
    fact = Fact(bytes.fromhex(snapshot), status)
    return [
        Entry(events.InitialSnapshotDeleted(now, snapshot, "web", 1), version),
        Entry(events.TargetStagingDeleted(now, snapshot, "web", "transfer-1"), version + 1),
        Entry(events.TargetSnapshotDeleted(now, snapshot, "web", "operator"), version + 2, fact),
    ]


def test_first_start_deploys_with_the_admin_and_enrols_operator_and_deleter(
    ledger: Ledger, admin: LocalAccount, operator: LocalAccount, deleter: LocalAccount
) -> None:
    contract = ledger.contract

    assert contract.admin() == admin.address
    assert contract.roles(operator.address) == ROLE_OPERATOR
    assert contract.roles(deleter.address) == ROLE_ALL
    first = ledger.records()[0]
    assert isinstance(first.event, events.LedgerOpened)
    assert first.sender == operator.address


def test_access_lists_every_account_with_its_roles_and_who_signs_here(
    ledger: Ledger, admin: LocalAccount, operator: LocalAccount, deleter: LocalAccount
) -> None:
    rows = {row["account"]: row for row in ledger.access()}

    assert rows[admin.address]["roles"] == ["operator", "deleter"]
    assert rows[admin.address]["admin"] is True
    assert rows[operator.address]["roles"] == ["operator"]
    assert rows[operator.address]["signs_here_as"] == "operator"
    assert rows[deleter.address]["roles"] == ["operator", "deleter"]
    assert rows[deleter.address]["signs_here_as"] == "deleter"
    assert rows[deleter.address]["changed_by"] == admin.address


@pytest.mark.parametrize("removal", [SnapshotStatus.DELETED, SnapshotStatus.RETIRED])
def test_operator_only_account_cannot_record_a_deletion_or_retirement(
    ledger: Ledger, removal: SnapshotStatus
) -> None:
    snapshot = committed_snapshot(ledger)
    count = ledger.contract.count()

    with pytest.raises(Unauthorised) as caught:
        ledger.contract.append(deletion(ledger, snapshot, removal))

    assert "not allowed to delete" in caught.value.message
    assert ledger.contract.count() == count
    assert ledger.contract.snapshot(bytes.fromhex(snapshot)).status is SnapshotStatus.COMMITTED


@pytest.mark.parametrize("signer", ["operator", "deleter"])
@pytest.mark.parametrize("change", ["enrol", "remove"])
def test_neither_operator_nor_deleter_may_enrol_or_remove_accounts(
    ledger: Ledger, outsider: LocalAccount, operator: LocalAccount, signer: str, change: str
) -> None:
    contract = ledger.contract if signer == "operator" else ledger.deleter_contract()
    target = outsider.address if change == "enrol" else operator.address

    with pytest.raises(Unauthorised) as caught:
        if change == "enrol":
            contract.enrol(target, ROLE_ALL)
        else:
            contract.remove(target)

    assert caught.value.account == contract.account.address
    assert ledger.contract.roles(outsider.address) == 0
    assert ledger.contract.roles(operator.address) == ROLE_OPERATOR


@pytest.mark.parametrize("removal", [SnapshotStatus.DELETED, SnapshotStatus.RETIRED])
def test_deletions_are_signed_by_the_deleter_and_keep_the_snapshots_record(
    ledger: Ledger, deleter: LocalAccount, removal: SnapshotStatus
) -> None:
    snapshot = committed_snapshot(ledger)
    before = [r for r in ledger.records() if r.subject == bytes.fromhex(snapshot)]

    appended = ledger.append(deletion(ledger, snapshot, removal))

    assert {r.sender for r in appended} == {deleter.address}
    record = ledger.contract.snapshot(bytes.fromhex(snapshot))
    assert record.status is removal
    assert record.updated_by == deleter.address
    assert record.updated_at == ledger.chain.head().timestamp
    assert record.root == bytes.fromhex(MERKLE)
    after = [r for r in ledger.records() if r.subject == bytes.fromhex(snapshot)]
    assert after[: len(before)] == before
    assert [r.status for r in after] == [SnapshotStatus.PENDING, SnapshotStatus.COMMITTED, removal]
    (row,) = ledger.projection.find_snapshots(snapshot)
    assert row["status"] == "deleted"


def test_everything_but_a_deletion_is_signed_by_the_operator(
    ledger: Ledger, operator: LocalAccount
) -> None:
    committed_snapshot(ledger)

    assert {r.sender for r in ledger.records()} == {operator.address}


def test_without_the_deleter_key_deletion_is_refused_and_nothing_is_appended(
    ledger_settings: LedgerSettings, ledger: Ledger, clock: Clock
) -> None:
    snapshot = committed_snapshot(ledger)
    ledger.close()
    operator_only = reopen(ledger_settings, clock, deleter_key="", admin_key="")
    try:
        count = operator_only.contract.count()
        with pytest.raises(KeyNotHeld) as caught:
            operator_only.check_deleter()
        with pytest.raises(KeyNotHeld):
            operator_only.append(deletion(operator_only, snapshot, SnapshotStatus.DELETED))

        assert caught.value.message == (
            "deleting snapshots needs the deleter key (deployment.deleter_key_file), which this"
            " controller does not hold; nothing was changed"
        )
        assert operator_only.contract.count() == count
        (row,) = operator_only.projection.find_snapshots(snapshot)
        assert row["status"] == "committed"
    finally:
        operator_only.close()


def test_a_revoked_deleter_is_refused_before_anything_is_appended(
    ledger: Ledger, admin: LocalAccount, deleter: LocalAccount
) -> None:
    committed_snapshot(ledger)
    ledger.revoke(admin.key.hex(), deleter.address)

    with pytest.raises(Unauthorised) as caught:
        ledger.check_deleter()

    assert caught.value.account == deleter.address
    assert ledger.contract.roles(deleter.address) == 0


def test_a_removed_account_can_no_longer_append(
    ledger: Ledger, admin: LocalAccount, operator: LocalAccount
) -> None:
    committed_snapshot(ledger)
    ledger.revoke(admin.key.hex(), operator.address)
    count = ledger.contract.count()

    with pytest.raises(Unauthorised) as caught:
        committed_snapshot(ledger, "two")

    assert "not an operator" in caught.value.message
    assert ledger.contract.count() == count


def test_the_admin_grants_a_new_unfunded_operator_gas_and_it_can_then_append(
    ledger: Ledger, admin: LocalAccount
) -> None:
    fresh = account(f"newcomer/{ledger.chain.backend}/{ledger.contract.address_hex}")
    assert ledger.chain.balance(bytes.fromhex(fresh.address[2:])) == 0

    funded = ledger.grant(admin.key.hex(), fresh.address, ROLE_OPERATOR)
    newcomer: LedgerContract = ledger.contract.signed_by(fresh)
    event = vm.registration("db", "kvm", "10.0.0.2", [ROOT], at_ms=ledger.now_ms())
    (record,) = newcomer.append([Entry(event, 0)])

    assert funded == access.GAS_ALLOWANCE
    assert record.sender == fresh.address
    assert ledger.contract.roles(fresh.address) == ROLE_OPERATOR


def test_a_grant_sends_no_ether_to_an_account_that_has_its_allowance(
    ledger: Ledger, admin: LocalAccount, outsider: LocalAccount
) -> None:
    assert ledger.grant(admin.key.hex(), outsider.address, ROLE_OPERATOR) == 0


def test_granting_without_the_admin_key_is_refused(
    ledger_settings: LedgerSettings, ledger: Ledger, clock: Clock, outsider: LocalAccount
) -> None:
    ledger.close()
    day_to_day = reopen(ledger_settings, clock, admin_key="")
    try:
        with pytest.raises(KeyNotHeld) as caught:
            day_to_day.grant("", outsider.address, ROLE_OPERATOR)
        assert "needs the admin key" in caught.value.message
        assert day_to_day.contract.roles(outsider.address) == 0
    finally:
        day_to_day.close()


def test_granting_to_something_that_is_not_an_address_is_an_input_error(
    ledger: Ledger, admin: LocalAccount
) -> None:
    with pytest.raises(InputError) as caught:
        ledger.grant(admin.key.hex(), "0x1234", ROLE_OPERATOR)

    assert caught.value.message == "'0x1234' is not an account address (0x and 40 hex digits)"


def test_one_key_deployment_keeps_signing_everything_with_its_key(
    ledger_settings: LedgerSettings, clock: Clock, admin: LocalAccount
) -> None:
    one_key = dataclasses.replace(
        ledger_settings, operator_key=admin.key.hex(), admin_key=None, deleter_key=None
    )
    ledger = Ledger.open(one_key, clock)
    try:
        snapshot = committed_snapshot(ledger)
        ledger.check_deleter()
        ledger.append(deletion(ledger, snapshot, SnapshotStatus.DELETED))

        assert ledger.contract.admin() == admin.address
        assert {r.sender for r in ledger.records()} == {admin.address}
        assert ledger.contract.snapshot(bytes.fromhex(snapshot)).status is SnapshotStatus.DELETED
    finally:
        ledger.close()


def test_a_restart_after_deploying_but_before_enrolling_enrols_then(
    ledger_settings: LedgerSettings, clock: Clock, admin: LocalAccount, operator: LocalAccount
) -> None:
    first = Ledger.open(ledger_settings, clock)
    first.revoke(admin.key.hex(), operator.address)
    first.close()
    state = ledger_settings.state_file
    state.write_text(state.read_text().replace('"enrolled": true', '"enrolled": false'))

    again = Ledger.open(ledger_settings, clock)
    try:
        assert '"enrolled": true' in state.read_text()
        assert again.contract.roles(operator.address) == ROLE_OPERATOR
    finally:
        again.close()
