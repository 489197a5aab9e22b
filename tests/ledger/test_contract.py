from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from contracts import CompiledContract
from ledger import events
from ledger.chain import Chain, ChainSettings, open_chain
from ledger.contract import (
    MAX_BATCH,
    MAX_PAYLOAD,
    ROLE_ALL,
    ROLE_OPERATOR,
    ZERO32,
    Entry,
    Fact,
    LedgerContract,
    LedgerRecord,
    SnapshotStatus,
)
from ledger.errors import (
    ChainError,
    InputError,
    TransactionReverted,
    Unauthorised,
    VersionConflict,
)
from ledger.rpc_chain import RpcChain
from ledger.tester_chain import EmbeddedChain
from tests.anvil import fund
from tests.ledger.conftest import fixed_clock

ROOT = keccak(text="merkle root")
OTHER_ROOT = keccak(text="another merkle root")


@pytest.fixture(params=["eth-tester", "anvil"])
def chain(
    request: pytest.FixtureRequest,
    chain_settings: ChainSettings,
    admin: LocalAccount,
    operator: LocalAccount,
    outsider: LocalAccount,
) -> Iterator[Chain]:
    """The contract's rules hold on the embedded chain and on a real JSON-RPC node."""
    if request.param == "eth-tester":
        opened = open_chain(chain_settings, fixed_clock)
    else:
        url: str = request.getfixturevalue("anvil")
        fund(url, admin.address, operator.address, outsider.address)
        opened = RpcChain(url)
    try:
        yield opened
    finally:
        opened.close()


def registered(vm: str, at_ms: int = 1) -> events.VmRegistered:
    return events.VmRegistered(
        at_ms=at_ms,
        vm=vm,
        vm_type="kvm",
        ip="10.0.0.1",
        disks=(events.Disk("system", "root", 1 << 30),),
    )


def opened(deployment: str = "site", at_ms: int = 1) -> events.LedgerOpened:
    return events.LedgerOpened(at_ms=at_ms, deployment=deployment, contract="0x0", chain_id=1)


def opened_of_size(size: int) -> events.LedgerOpened:
    """A LedgerOpened event whose canonical payload is exactly `size` bytes."""
    padding = size - len(events.encode(opened("")))
    while len(events.encode(opened("d" * padding))) > size:
        padding -= 1
    event = opened("d" * padding)
    assert len(events.encode(event)) == size
    return event


def snapshot_id(label: str) -> bytes:
    return keccak(text=f"snapshot/{label}")


def record_fact(
    contract: LedgerContract,
    vm: str,
    subject: bytes,
    status: SnapshotStatus,
    root: bytes = ZERO32,
) -> LedgerRecord:
    version = contract.stream_version(events.vm_stream(vm))
    (record,) = contract.append([Entry(registered(vm), version, Fact(subject, status, root))])
    return record


def client_for(
    chain: EmbeddedChain, compiled: CompiledContract, deployed: LedgerContract, who: LocalAccount
) -> LedgerContract:
    return LedgerContract(chain, compiled, deployed.address, who)


def test_deploy_makes_the_deployer_admin_with_every_role(
    chain: EmbeddedChain, compiled: CompiledContract, admin: LocalAccount, outsider: LocalAccount
) -> None:
    contract, receipt = LedgerContract.deploy(chain, compiled, admin)

    assert receipt.status == 1
    assert receipt.contract_address == contract.address
    assert contract.admin() == admin.address
    assert contract.roles(admin.address) == ROLE_ALL
    assert contract.roles(outsider.address) == 0
    assert (contract.count(), contract.head()) == (0, ZERO32)


def test_append_returns_one_record_per_entry_with_sequence_version_and_head(
    ledger_contract: LedgerContract, chain: EmbeddedChain, admin: LocalAccount
) -> None:
    first, second = opened(), registered("web")

    records = ledger_contract.append([Entry(first, 0), Entry(second, 0)])

    assert [r.seq for r in records] == [1, 2]
    assert [r.version for r in records] == [1, 1]
    assert [r.stream_id for r in records] == [
        events.stream_id(events.DEPLOYMENT_STREAM),
        events.stream_id("vm/web"),
    ]
    assert [r.event for r in records] == [first, second]
    assert [r.payload for r in records] == [events.encode(first), events.encode(second)]
    assert {r.sender for r in records} == {admin.address}
    assert {(r.subject, r.root, r.status) for r in records} == {(ZERO32, ZERO32, 0)}
    assert records[-1].head == ledger_contract.head()
    assert records[0].head != records[1].head
    assert ledger_contract.count() == 2
    assert records[-1].block_number == chain.head().number


def test_records_of_one_batch_share_one_transaction_and_block(
    ledger_contract: LedgerContract, chain: EmbeddedChain
) -> None:
    before = chain.head().number
    batch = [Entry(registered("web", at_ms=n), n) for n in range(3)]

    records = ledger_contract.append(batch)

    assert chain.head().number == before + 1
    assert len({r.tx_hash for r in records}) == 1
    assert {r.block_number for r in records} == {before + 1}
    assert [r.log_index for r in records] == [0, 1, 2]
    assert [r.version for r in records] == [1, 2, 3]
    assert ledger_contract.stream_version("vm/web") == 3


def test_records_view_lists_every_appended_event_from_a_block_on(
    ledger_contract: LedgerContract,
) -> None:
    early = ledger_contract.append([Entry(opened(), 0)])
    late = ledger_contract.append([Entry(registered("a"), 0), Entry(registered("b"), 0)])

    assert ledger_contract.records() == early + late
    assert ledger_contract.records(from_block=late[0].block_number) == late
    assert ledger_contract.records(to_block=early[0].block_number) == early


def test_stale_expected_version_is_a_version_conflict_and_appends_nothing(
    ledger_contract: LedgerContract,
) -> None:
    ledger_contract.append([Entry(registered("web"), 0)])
    head, count = ledger_contract.head(), ledger_contract.count()

    with pytest.raises(VersionConflict) as caught:
        ledger_contract.append([Entry(registered("web"), 0)])

    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("vm/web", 0, 1)
    assert caught.value.exit_code == 5
    assert (ledger_contract.head(), ledger_contract.count()) == (head, count)
    assert ledger_contract.stream_version("vm/web") == 1


def test_expected_version_ahead_of_the_stream_is_a_version_conflict(
    ledger_contract: LedgerContract,
) -> None:
    with pytest.raises(VersionConflict) as caught:
        ledger_contract.append([Entry(registered("web"), 4)])

    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("vm/web", 4, 0)
    assert ledger_contract.count() == 0


def test_batch_with_one_stale_entry_appends_none_of_its_entries(
    ledger_contract: LedgerContract,
) -> None:
    ledger_contract.append([Entry(registered("web"), 0)])
    head, count = ledger_contract.head(), ledger_contract.count()
    batch = [Entry(registered("db"), 0), Entry(registered("cache"), 0), Entry(registered("web"), 0)]

    with pytest.raises(VersionConflict) as caught:
        ledger_contract.append(batch)

    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("vm/web", 0, 1)
    assert (ledger_contract.head(), ledger_contract.count()) == (head, count)
    assert ledger_contract.stream_version("vm/db") == 0
    assert ledger_contract.stream_version("vm/cache") == 0


def test_batch_claiming_one_stream_version_twice_is_a_version_conflict(
    ledger_contract: LedgerContract,
) -> None:
    ledger_contract.append([Entry(registered("web"), 0)])
    head, count = ledger_contract.head(), ledger_contract.count()

    with pytest.raises(VersionConflict) as caught:
        ledger_contract.append([Entry(registered("web", 2), 1), Entry(registered("web", 3), 1)])

    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("vm/web", 1, 2)
    assert (ledger_contract.head(), ledger_contract.count()) == (head, count)
    assert ledger_contract.stream_version("vm/web") == 1


def test_account_without_a_role_is_unauthorised_and_appends_nothing(
    ledger_contract: LedgerContract,
    chain: EmbeddedChain,
    compiled: CompiledContract,
    outsider: LocalAccount,
) -> None:
    stranger = client_for(chain, compiled, ledger_contract, outsider)

    with pytest.raises(Unauthorised) as caught:
        stranger.append([Entry(registered("web"), 0)])

    assert caught.value.account == outsider.address
    assert caught.value.exit_code == 6
    assert "not an operator" in caught.value.message
    assert (ledger_contract.count(), ledger_contract.head()) == (0, ZERO32)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c, who: c.enrol(who, ROLE_ALL), id="enrol"),
        pytest.param(lambda c, who: c.remove(who), id="remove"),
    ],
)
def test_only_the_admin_may_change_roles(
    ledger_contract: LedgerContract,
    chain: EmbeddedChain,
    compiled: CompiledContract,
    operator: LocalAccount,
    outsider: LocalAccount,
    call: Callable[[LedgerContract, str], object],
) -> None:
    ledger_contract.enrol(operator.address, ROLE_ALL)
    enrolled = client_for(chain, compiled, ledger_contract, operator)

    with pytest.raises(Unauthorised) as caught:
        call(enrolled, outsider.address)

    assert caught.value.account == operator.address
    assert ledger_contract.roles(outsider.address) == 0
    assert ledger_contract.roles(operator.address) == ROLE_ALL


def test_enrol_refuses_an_unknown_role_bit(
    ledger_contract: LedgerContract, operator: LocalAccount
) -> None:
    with pytest.raises(TransactionReverted) as caught:
        ledger_contract.enrol(operator.address, 4)

    assert caught.value.reason == "unknown roles"
    assert ledger_contract.roles(operator.address) == 0


def test_enrolled_operator_can_append_and_a_removed_one_cannot(
    ledger_contract: LedgerContract,
    chain: EmbeddedChain,
    compiled: CompiledContract,
    operator: LocalAccount,
) -> None:
    enrolled = client_for(chain, compiled, ledger_contract, operator)
    ledger_contract.enrol(operator.address, ROLE_OPERATOR)

    (record,) = enrolled.append([Entry(registered("web"), 0)])
    ledger_contract.remove(operator.address)

    assert record.sender == operator.address
    assert ledger_contract.roles(operator.address) == 0
    with pytest.raises(Unauthorised):
        enrolled.append([Entry(registered("web"), 1)])
    assert ledger_contract.count() == 1


@pytest.mark.parametrize("removal", [SnapshotStatus.DELETED, SnapshotStatus.RETIRED])
def test_operator_without_the_deleter_role_cannot_record_a_deletion_or_retirement(
    ledger_contract: LedgerContract,
    chain: EmbeddedChain,
    compiled: CompiledContract,
    operator: LocalAccount,
    removal: SnapshotStatus,
) -> None:
    enrolled = client_for(chain, compiled, ledger_contract, operator)
    ledger_contract.enrol(operator.address, ROLE_OPERATOR)
    snap = snapshot_id("one")
    record_fact(enrolled, "web", snap, SnapshotStatus.COMMITTED, ROOT)

    with pytest.raises(Unauthorised) as caught:
        record_fact(enrolled, "web", snap, removal)

    assert "not allowed to delete" in caught.value.message
    assert enrolled.snapshot(snap).status is SnapshotStatus.COMMITTED
    assert enrolled.live_snapshots("web") == 1
    assert enrolled.retired("web") == []
    assert enrolled.count() == 1


@pytest.mark.parametrize("removal", [SnapshotStatus.DELETED, SnapshotStatus.RETIRED])
def test_operator_with_the_deleter_role_can_record_a_deletion_or_retirement(
    ledger_contract: LedgerContract,
    chain: EmbeddedChain,
    compiled: CompiledContract,
    operator: LocalAccount,
    removal: SnapshotStatus,
) -> None:
    enrolled = client_for(chain, compiled, ledger_contract, operator)
    ledger_contract.enrol(operator.address, ROLE_ALL)
    snap = snapshot_id("one")
    record_fact(enrolled, "web", snap, SnapshotStatus.COMMITTED, ROOT)

    record = record_fact(enrolled, "web", snap, removal)

    assert enrolled.snapshot(snap).status is removal
    assert enrolled.snapshot(snap).updated_by == operator.address
    assert record.status == removal
    assert enrolled.live_snapshots("web") == 0


def test_snapshot_record_holds_root_status_previous_and_who_changed_it_when(
    ledger_contract: LedgerContract,
    chain: EmbeddedChain,
    compiled: CompiledContract,
    operator: LocalAccount,
) -> None:
    enrolled = client_for(chain, compiled, ledger_contract, operator)
    ledger_contract.enrol(operator.address, ROLE_OPERATOR)
    first, second = snapshot_id("first"), snapshot_id("second")
    record_fact(ledger_contract, "web", first, SnapshotStatus.COMMITTED, ROOT)

    pending = record_fact(enrolled, "web", second, SnapshotStatus.PENDING)
    assert enrolled.snapshot(second).status is SnapshotStatus.PENDING
    assert enrolled.snapshot(second).root == ZERO32
    assert enrolled.snapshot(second).seq == pending.seq

    committed = record_fact(enrolled, "web", second, SnapshotStatus.COMMITTED, OTHER_ROOT)
    view = enrolled.snapshot(second)

    assert view.vm_stream == events.stream_id("vm/web")
    assert view.root == OTHER_ROOT
    assert view.status is SnapshotStatus.COMMITTED
    assert view.previous == first
    assert view.seq == committed.seq
    assert view.updated_by == operator.address
    assert view.updated_at == chain.head().timestamp
    assert enrolled.snapshot(first).previous == ZERO32
    assert enrolled.snapshot(first).updated_by == ledger_contract.account.address
    assert (committed.subject, committed.root, committed.status) == (second, OTHER_ROOT, 2)


def test_unknown_snapshot_reads_as_an_empty_record(ledger_contract: LedgerContract) -> None:
    view = ledger_contract.snapshot(snapshot_id("never"))

    assert view.status is SnapshotStatus.NONE
    assert (view.root, view.previous, view.seq) == (ZERO32, ZERO32, 0)


def test_latest_snapshot_is_the_last_committed_one(ledger_contract: LedgerContract) -> None:
    first, second, third = (snapshot_id(n) for n in ("first", "second", "third"))
    assert ledger_contract.latest_snapshot("web") == ZERO32

    record_fact(ledger_contract, "web", first, SnapshotStatus.COMMITTED, ROOT)
    record_fact(ledger_contract, "web", second, SnapshotStatus.COMMITTED, ROOT)
    record_fact(ledger_contract, "web", third, SnapshotStatus.PENDING)

    assert ledger_contract.latest_snapshot("web") == second
    assert ledger_contract.live_snapshots("web") == 2
    assert ledger_contract.latest_snapshot("db") == ZERO32
    assert ledger_contract.live_snapshots("db") == 0


def test_deleting_the_latest_snapshot_falls_back_to_the_previous_live_one(
    ledger_contract: LedgerContract,
) -> None:
    first, second, third = (snapshot_id(n) for n in ("first", "second", "third"))
    for snap in (first, second, third):
        record_fact(ledger_contract, "web", snap, SnapshotStatus.COMMITTED, ROOT)

    record_fact(ledger_contract, "web", second, SnapshotStatus.DELETED)
    assert ledger_contract.latest_snapshot("web") == third
    assert ledger_contract.live_snapshots("web") == 2

    record_fact(ledger_contract, "web", third, SnapshotStatus.DELETED)
    assert ledger_contract.latest_snapshot("web") == first
    assert ledger_contract.live_snapshots("web") == 1

    record_fact(ledger_contract, "web", first, SnapshotStatus.DELETED)
    assert ledger_contract.latest_snapshot("web") == ZERO32
    assert ledger_contract.live_snapshots("web") == 0


def test_retired_snapshots_are_listed_per_vm_in_order_of_retirement(
    ledger_contract: LedgerContract,
) -> None:
    first, second, third = (snapshot_id(n) for n in ("first", "second", "third"))
    for snap in (first, second, third):
        record_fact(ledger_contract, "web", snap, SnapshotStatus.COMMITTED, ROOT)
    assert ledger_contract.retired("web") == []

    record_fact(ledger_contract, "web", third, SnapshotStatus.RETIRED)
    record_fact(ledger_contract, "web", first, SnapshotStatus.RETIRED)

    assert ledger_contract.retired("web") == [third, first]
    assert ledger_contract.snapshot(third).status is SnapshotStatus.RETIRED
    assert ledger_contract.retired("db") == []


def test_live_committed_and_retired_counts_tell_retention_from_operator_deletions(
    ledger_contract: LedgerContract,
) -> None:
    snaps = [snapshot_id(f"s{n}") for n in range(5)]
    for snap in snaps:
        record_fact(ledger_contract, "web", snap, SnapshotStatus.COMMITTED, ROOT)
    record_fact(ledger_contract, "web", snapshot_id("pending"), SnapshotStatus.PENDING)
    assert (ledger_contract.live_snapshots("web"), ledger_contract.committed_total("web")) == (5, 5)

    record_fact(ledger_contract, "web", snaps[0], SnapshotStatus.RETIRED)
    record_fact(ledger_contract, "web", snaps[1], SnapshotStatus.DELETED)
    record_fact(ledger_contract, "web", snaps[2], SnapshotStatus.RETIRED)

    live = ledger_contract.live_snapshots("web")
    committed = ledger_contract.committed_total("web")
    retired = ledger_contract.retired("web")
    assert (live, committed) == (2, 5)
    assert retired == [snaps[0], snaps[2]]
    assert snaps[1] not in retired
    assert committed - live - len(retired) == 1
    assert ledger_contract.committed_total("db") == 0


def test_retiring_the_latest_snapshot_falls_back_to_the_previous_live_one(
    ledger_contract: LedgerContract,
) -> None:
    first, second, third = (snapshot_id(n) for n in ("first", "second", "third"))
    for snap in (first, second, third):
        record_fact(ledger_contract, "web", snap, SnapshotStatus.COMMITTED, ROOT)

    record_fact(ledger_contract, "web", second, SnapshotStatus.DELETED)
    record_fact(ledger_contract, "web", third, SnapshotStatus.RETIRED)
    assert ledger_contract.latest_snapshot("web") == first
    assert ledger_contract.live_snapshots("web") == 1

    record_fact(ledger_contract, "web", first, SnapshotStatus.RETIRED)
    assert ledger_contract.latest_snapshot("web") == ZERO32
    assert ledger_contract.live_snapshots("web") == 0
    assert ledger_contract.retired("web") == [third, first]


def test_pending_snapshot_can_fail_and_never_counts_as_live(
    ledger_contract: LedgerContract,
) -> None:
    snap = snapshot_id("doomed")
    record_fact(ledger_contract, "web", snap, SnapshotStatus.PENDING)

    record_fact(ledger_contract, "web", snap, SnapshotStatus.FAILED)

    assert ledger_contract.snapshot(snap).status is SnapshotStatus.FAILED
    assert ledger_contract.live_snapshots("web") == 0
    assert ledger_contract.latest_snapshot("web") == ZERO32


def test_snapshot_can_go_pending_then_committed_within_one_batch(
    ledger_contract: LedgerContract,
) -> None:
    snap = snapshot_id("quick")
    batch = [
        Entry(registered("web"), 0, Fact(snap, SnapshotStatus.PENDING)),
        Entry(registered("web"), 1, Fact(snap, SnapshotStatus.COMMITTED, ROOT)),
    ]

    records = ledger_contract.append(batch)

    assert [r.status for r in records] == [1, 2]
    assert ledger_contract.snapshot(snap).status is SnapshotStatus.COMMITTED
    assert ledger_contract.snapshot(snap).seq == records[1].seq
    assert ledger_contract.latest_snapshot("web") == snap


A, B = snapshot_id("a"), snapshot_id("b")
Status = SnapshotStatus


@pytest.mark.parametrize(
    ("history", "refused", "reason"),
    [
        pytest.param(
            [], ("web", A, Status.COMMITTED, ZERO32), "root required", id="commit-no-root"
        ),
        pytest.param(
            [("web", A, Status.PENDING, ZERO32)],
            ("web", A, Status.DELETED, ZERO32),
            "snapshot not committed",
            id="delete-pending",
        ),
        pytest.param(
            [], ("web", A, Status.DELETED, ZERO32), "snapshot not committed", id="delete-none"
        ),
        pytest.param(
            [("web", A, Status.PENDING, ZERO32)],
            ("web", A, Status.PENDING, ZERO32),
            "snapshot already exists",
            id="pending-twice",
        ),
        pytest.param(
            [("web", A, Status.COMMITTED, ROOT)],
            ("web", A, Status.COMMITTED, ROOT),
            "snapshot not pending",
            id="commit-twice",
        ),
        pytest.param(
            [], ("web", A, Status.FAILED, ZERO32), "snapshot not pending", id="fail-unknown"
        ),
        pytest.param(
            [("web", A, Status.COMMITTED, ROOT)],
            ("web", A, Status.FAILED, ZERO32),
            "snapshot not pending",
            id="fail-committed",
        ),
        pytest.param(
            [("web", A, Status.PENDING, ZERO32), ("web", A, Status.FAILED, ZERO32)],
            ("web", A, Status.COMMITTED, ROOT),
            "snapshot not pending",
            id="commit-failed",
        ),
        pytest.param(
            [("web", A, Status.COMMITTED, ROOT), ("web", A, Status.DELETED, ZERO32)],
            ("web", A, Status.DELETED, ZERO32),
            "snapshot not committed",
            id="delete-twice",
        ),
        pytest.param(
            [("web", A, Status.PENDING, ZERO32)],
            ("web", A, Status.RETIRED, ZERO32),
            "snapshot not committed",
            id="retire-pending",
        ),
        pytest.param(
            [], ("web", A, Status.RETIRED, ZERO32), "snapshot not committed", id="retire-none"
        ),
        pytest.param(
            [("web", A, Status.COMMITTED, ROOT), ("web", A, Status.RETIRED, ZERO32)],
            ("web", A, Status.RETIRED, ZERO32),
            "snapshot not committed",
            id="retire-twice",
        ),
        pytest.param(
            [("web", A, Status.COMMITTED, ROOT), ("web", A, Status.DELETED, ZERO32)],
            ("web", A, Status.RETIRED, ZERO32),
            "snapshot not committed",
            id="retire-deleted",
        ),
        pytest.param(
            [("web", A, Status.COMMITTED, ROOT), ("web", A, Status.RETIRED, ZERO32)],
            ("web", A, Status.DELETED, ZERO32),
            "snapshot not committed",
            id="delete-retired",
        ),
        pytest.param(
            [("web", B, Status.COMMITTED, ROOT)],
            ("db", B, Status.RETIRED, ZERO32),
            "snapshot belongs to another stream",
            id="retire-other-stream",
        ),
        pytest.param(
            [], ("web", ZERO32, Status.PENDING, ZERO32), "snapshot id required", id="no-id"
        ),
        pytest.param(
            [("web", B, Status.PENDING, ZERO32)],
            ("db", B, Status.COMMITTED, ROOT),
            "snapshot belongs to another stream",
            id="other-stream",
        ),
    ],
)
def test_refused_status_transition_reverts_and_appends_nothing(
    ledger_contract: LedgerContract,
    history: list[tuple[str, bytes, SnapshotStatus, bytes]],
    refused: tuple[str, bytes, SnapshotStatus, bytes],
    reason: str,
) -> None:
    for step in history:
        record_fact(ledger_contract, *step)
    head, count = ledger_contract.head(), ledger_contract.count()
    vm, subject = refused[0], refused[1]
    before = ledger_contract.snapshot(subject)
    retired = ledger_contract.retired(vm)

    with pytest.raises(TransactionReverted) as caught:
        record_fact(ledger_contract, *refused)

    assert type(caught.value) is TransactionReverted
    assert caught.value.reason == reason
    assert (ledger_contract.head(), ledger_contract.count()) == (head, count)
    assert ledger_contract.snapshot(subject) == before
    assert ledger_contract.retired(vm) == retired
    assert ledger_contract.stream_version(events.vm_stream(vm)) == sum(
        1 for step in history if step[0] == vm
    )


def test_full_batch_of_near_max_payloads_with_facts_fits_the_gas_limit(
    ledger_contract: LedgerContract, chain: EmbeddedChain
) -> None:
    event = opened_of_size(MAX_PAYLOAD)
    batch = [
        Entry(event, n, Fact(snapshot_id(f"big-{n}"), SnapshotStatus.COMMITTED, ROOT))
        for n in range(MAX_BATCH)
    ]

    records = ledger_contract.append(batch)

    assert len(records) == MAX_BATCH
    assert len({r.tx_hash for r in records}) == 1
    assert {len(r.payload) for r in records} == {MAX_PAYLOAD}
    assert ledger_contract.count() == MAX_BATCH
    assert ledger_contract.snapshot(snapshot_id(f"big-{MAX_BATCH - 1}")).root == ROOT
    assert chain.head().number == records[0].block_number


@pytest.mark.parametrize("size", [0, MAX_BATCH + 1])
def test_batch_outside_one_to_max_is_refused_before_anything_is_sent(
    ledger_contract: LedgerContract, chain: EmbeddedChain, size: int
) -> None:
    block = chain.head().number
    batch = [Entry(registered("web", n), n) for n in range(size)]

    with pytest.raises(InputError) as caught:
        ledger_contract.append(batch)

    assert f"1 to {MAX_BATCH}" in caught.value.message
    assert chain.head().number == block
    assert ledger_contract.count() == 0


def test_payload_over_the_maximum_is_refused_before_anything_is_sent(
    ledger_contract: LedgerContract, chain: EmbeddedChain
) -> None:
    block = chain.head().number
    oversized = opened_of_size(MAX_PAYLOAD + 1)

    with pytest.raises(InputError) as caught:
        ledger_contract.append([Entry(registered("web"), 0), Entry(oversized, 0)])

    assert caught.value.message == (
        f"LedgerOpened is {MAX_PAYLOAD + 1} bytes; the ledger takes {MAX_PAYLOAD}"
    )
    assert chain.head().number == block
    assert ledger_contract.count() == 0


def test_address_without_the_contract_answers_views_with_a_chain_error(
    ledger_contract: LedgerContract,
    chain: EmbeddedChain,
    compiled: CompiledContract,
    admin: LocalAccount,
) -> None:
    nowhere = LedgerContract(chain, compiled, keccak(text="nowhere")[:20], admin)

    with pytest.raises(ChainError):
        nowhere.count()
