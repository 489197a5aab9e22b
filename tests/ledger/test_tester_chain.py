from __future__ import annotations

import dataclasses
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import cbor2
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from contracts import CompiledContract
from ledger import events
from ledger.chain import ChainSettings, open_chain
from ledger.contract import Entry, Fact, LedgerContract, SnapshotStatus
from ledger.errors import ChainError, LedgerCorrupted, VersionConflict
from ledger.tester_chain import GAS_LIMIT, EmbeddedChain
from ledger.txlog import MAGIC

RECORD_HEADER = struct.Struct(">III")


def frame_header(body: bytes) -> bytes:
    """Length, body checksum, and the checksum of those two."""
    fields = struct.pack(">II", len(body), zlib.crc32(body))
    return fields + struct.pack(">I", zlib.crc32(fields))


def transfer(chain: EmbeddedChain, sender: LocalAccount, to: str, value: int) -> bytes:
    max_fee, tip = chain.fee_caps()
    tx = {
        "type": 2,
        "chainId": chain.chain_id,
        "nonce": chain.nonce(bytes.fromhex(sender.address[2:])),
        "gas": 21_000,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": tip,
        "to": to,
        "value": value,
        "data": b"",
    }
    return bytes(sender.sign_transaction(tx).raw_transaction)


def registered(vm: str, at_ms: int = 1) -> events.VmRegistered:
    return events.VmRegistered(
        at_ms=at_ms,
        vm=vm,
        vm_type="kvm",
        ip="10.0.0.1",
        disks=(events.Disk("system", "root", 1 << 30),),
    )


def make_history(chain: EmbeddedChain, compiled: CompiledContract, admin: LocalAccount) -> None:
    """A contract deploy, appends with snapshot facts, a revert and a plain transfer."""
    contract, _receipt = LedgerContract.deploy(chain, compiled, admin)
    snap = keccak(text="snapshot")
    contract.append([Entry(registered("web"), 0), Entry(registered("db"), 0)])
    contract.append([Entry(registered("web", 2), 1, Fact(snap, SnapshotStatus.PENDING))])
    contract.append(
        [Entry(registered("web", 3), 2, Fact(snap, SnapshotStatus.COMMITTED, keccak(b"root")))]
    )
    with pytest.raises(VersionConflict):
        contract.append([Entry(registered("web", 4), 0)])
    chain.submit(transfer(chain, admin, Account.from_key(keccak(b"payee")).address, 10**18))


def record_offsets(log: bytes) -> list[int]:
    offsets, offset = [], len(MAGIC)
    while offset < len(log):
        offsets.append(offset)
        length, _crc, _header_crc = RECORD_HEADER.unpack_from(log, offset)
        offset += RECORD_HEADER.size + length
    return offsets


def remove_state(data_dir: Path) -> None:
    for path in data_dir.glob("evm-state.sqlite*"):
        path.unlink()


def wall_clock() -> float:
    return time.time()


@pytest.fixture
def recorded(
    chain_settings: ChainSettings,
    compiled: CompiledContract,
    admin: LocalAccount,
    clock: Callable[[], float],
) -> ChainSettings:
    """Settings of a closed chain folder that holds a short history."""
    with closing(open_chain(chain_settings, clock)) as chain:
        assert isinstance(chain, EmbeddedChain)
        make_history(chain, compiled, admin)
    return chain_settings


def open_embedded(settings: ChainSettings, clock: Callable[[], float]) -> EmbeddedChain:
    chain = open_chain(settings, clock)
    assert isinstance(chain, EmbeddedChain)
    return chain


def test_fresh_chain_logs_its_genesis_block_first(
    chain: EmbeddedChain, chain_settings: ChainSettings
) -> None:
    (genesis,) = chain.blocks

    assert (genesis.number, genesis.raw_tx) == (0, b"")
    assert genesis.timestamp == chain_settings.genesis_timestamp
    assert genesis.block_hash == chain.head().hash
    assert chain.head().number == 0
    assert chain.gas_limit() == GAS_LIMIT


def test_every_transaction_is_mined_in_its_own_block(
    chain: EmbeddedChain, admin: LocalAccount, operator: LocalAccount
) -> None:
    first = chain.submit(transfer(chain, admin, operator.address, 1))
    second = chain.submit(transfer(chain, admin, operator.address, 2))

    assert (first.status, second.status) == (1, 1)
    assert (first.block_number, second.block_number) == (1, 2)
    assert [b.number for b in chain.blocks] == [0, 1, 2]
    assert chain.blocks[2].block_hash == second.block_hash == chain.head().hash


def test_block_timestamps_follow_the_clock_but_never_repeat(
    chain: EmbeddedChain, admin: LocalAccount, operator: LocalAccount, clock: Callable[[], float]
) -> None:
    for value in range(3):
        chain.submit(transfer(chain, admin, operator.address, value + 1))

    assert [b.timestamp for b in chain.blocks[1:]] == [int(clock()) + n for n in range(3)]
    assert chain.head().timestamp == int(clock()) + 2


def test_refused_transaction_is_neither_mined_nor_logged(
    chain: EmbeddedChain, admin: LocalAccount, operator: LocalAccount
) -> None:
    chain.submit(transfer(chain, admin, operator.address, 1))
    head = chain.head()

    with pytest.raises(ChainError):
        chain.submit(b"not a transaction")

    assert chain.head() == head
    assert len(chain.blocks) == 2


def test_account_funded_by_a_transfer_can_send_its_own_transactions(
    chain: EmbeddedChain, admin: LocalAccount
) -> None:
    newcomer = Account.from_key(keccak(b"newcomer"))
    with pytest.raises(ChainError):
        chain.submit(transfer(chain, newcomer, admin.address, 1))

    chain.submit(transfer(chain, admin, newcomer.address, 10**18))
    receipt = chain.submit(transfer(chain, newcomer, admin.address, 1))

    assert receipt.status == 1
    assert chain.nonce(bytes.fromhex(newcomer.address[2:])) == 1


def test_reverted_transaction_is_mined_with_a_failed_status(
    chain: EmbeddedChain, compiled: CompiledContract, admin: LocalAccount
) -> None:
    contract, _receipt = LedgerContract.deploy(chain, compiled, admin)
    block = chain.head().number

    with pytest.raises(VersionConflict):
        contract.append([Entry(registered("web"), 7)])

    assert chain.head().number == block + 1
    assert chain.blocks[-1].number == block + 1


# -- determinism ---------------------------------------------------------------


def test_replicas_fed_the_same_blocks_reach_the_same_hash_block_by_block(
    recorded: ChainSettings, tmp_path: Path, clock: Callable[[], float]
) -> None:
    with closing(open_embedded(recorded, clock)) as source:
        blocks = source.blocks
    replicas = [
        open_embedded(dataclasses.replace(recorded, data_dir=tmp_path / name), wall_clock)
        for name in ("replica-a", "replica-b")
    ]
    try:
        assert {r.head().hash for r in replicas} == {blocks[0].block_hash}
        for block in blocks[1:]:
            receipts = [r.apply(block.raw_tx, block.timestamp) for r in replicas]
            assert {rc.block_hash for rc in receipts} == {block.block_hash}, block.number
        assert [r.blocks for r in replicas] == [blocks, blocks]
    finally:
        for replica in replicas:
            replica.close()
    assert len(blocks) > 5


def test_replica_fed_a_different_timestamp_diverges(
    recorded: ChainSettings, tmp_path: Path, clock: Callable[[], float]
) -> None:
    with closing(open_embedded(recorded, clock)) as source:
        first = source.blocks[1]
    replica_settings = dataclasses.replace(recorded, data_dir=tmp_path / "replica")

    with closing(open_embedded(replica_settings, clock)) as replica:
        receipt = replica.apply(first.raw_tx, first.timestamp + 1)

    assert receipt.block_hash != first.block_hash


# -- persistence and recovery --------------------------------------------------


def test_reopened_chain_has_the_same_head_and_log(
    recorded: ChainSettings, clock: Callable[[], float], admin: LocalAccount
) -> None:
    with closing(open_embedded(recorded, clock)) as chain:
        head, blocks = chain.head(), chain.blocks
        nonce = chain.nonce(bytes.fromhex(admin.address[2:]))

    with closing(open_embedded(recorded, clock)) as again:
        assert again.head() == head
        assert again.blocks == blocks
        assert again.nonce(bytes.fromhex(admin.address[2:])) == nonce


def test_chain_without_its_state_database_rebuilds_it_from_the_log(
    recorded: ChainSettings, clock: Callable[[], float]
) -> None:
    assert recorded.data_dir is not None
    with closing(open_embedded(recorded, clock)) as chain:
        head = chain.head()
    remove_state(recorded.data_dir)

    with closing(open_embedded(recorded, clock)) as rebuilt:
        assert rebuilt.head() == head
    with closing(open_embedded(recorded, clock)) as reopened:
        assert reopened.head() == head


def test_torn_record_after_the_state_checkpoint_is_cut_off(
    recorded: ChainSettings,
    tmp_path: Path,
    clock: Callable[[], float],
    admin: LocalAccount,
    operator: LocalAccount,
) -> None:
    assert recorded.data_dir is not None
    crashed = dataclasses.replace(recorded, data_dir=tmp_path / "crashed")
    shutil.copytree(recorded.data_dir, tmp_path / "crashed")
    with closing(open_embedded(recorded, clock)) as chain:
        head = chain.head()
        chain.submit(transfer(chain, admin, operator.address, 5))
    intact = (tmp_path / "crashed" / "transactions.log").read_bytes()
    full = (recorded.data_dir / "transactions.log").read_bytes()
    next_record = full[len(intact) :]
    (tmp_path / "crashed" / "transactions.log").write_bytes(
        intact + next_record[: len(next_record) // 2]
    )

    with closing(open_embedded(crashed, clock)) as survivor:
        assert survivor.head() == head
        assert len(survivor.blocks) == head.number + 1
        assert (tmp_path / "crashed" / "transactions.log").read_bytes() == intact
        survivor.submit(transfer(survivor, admin, operator.address, 6))
        after = survivor.head()
    with closing(open_embedded(crashed, clock)) as reopened:
        assert reopened.head() == after


def test_torn_last_record_without_a_state_checkpoint_opens_at_the_previous_block(
    recorded: ChainSettings, clock: Callable[[], float]
) -> None:
    assert recorded.data_dir is not None
    with closing(open_embedded(recorded, clock)) as chain:
        blocks = chain.blocks
    log_path = recorded.data_dir / "transactions.log"
    log = log_path.read_bytes()
    last = record_offsets(log)[-1]
    log_path.write_bytes(log[: last + (len(log) - last) // 2])
    remove_state(recorded.data_dir)

    with closing(open_embedded(recorded, clock)) as survivor:
        assert survivor.head().number == blocks[-2].number
        assert survivor.head().hash == blocks[-2].block_hash
        assert survivor.blocks == blocks[:-1]


@pytest.mark.parametrize(
    ("where", "mask"),
    [
        pytest.param(RECORD_HEADER.size + 5, 0x01, id="body"),
        pytest.param(0, 0x01, id="length"),
    ],
)
def test_damaged_middle_record_is_refused_and_left_in_place(
    recorded: ChainSettings, clock: Callable[[], float], where: int, mask: int
) -> None:
    assert recorded.data_dir is not None
    log_path = recorded.data_dir / "transactions.log"
    log = bytearray(log_path.read_bytes())
    offsets = record_offsets(bytes(log))
    log[offsets[len(offsets) // 2] + where] ^= mask
    log_path.write_bytes(log)
    remove_state(recorded.data_dir)

    with pytest.raises(LedgerCorrupted):
        open_embedded(recorded, clock).close()

    assert log_path.read_bytes() == log


@pytest.mark.parametrize("state", ["kept", "lost"])
def test_changed_genesis_timestamp_against_an_existing_log_is_refused(
    recorded: ChainSettings, clock: Callable[[], float], state: str
) -> None:
    assert recorded.data_dir is not None
    if state == "lost":
        remove_state(recorded.data_dir)
    moved = dataclasses.replace(recorded, genesis_timestamp=recorded.genesis_timestamp + 1)

    with pytest.raises(LedgerCorrupted) as caught:
        open_embedded(moved, clock).close()

    assert "genesis" in caught.value.message


def test_log_shorter_than_the_state_checkpoint_is_refused(
    recorded: ChainSettings, clock: Callable[[], float]
) -> None:
    assert recorded.data_dir is not None
    log_path = recorded.data_dir / "transactions.log"
    log = log_path.read_bytes()
    log_path.write_bytes(log[: record_offsets(log)[-1]])

    with pytest.raises(LedgerCorrupted) as caught:
        open_embedded(recorded, clock).close()

    assert "beyond the transaction log" in caught.value.message


def test_state_checkpoint_of_another_history_is_refused(
    chain_settings: ChainSettings,
    tmp_path: Path,
    clock: Callable[[], float],
    admin: LocalAccount,
    operator: LocalAccount,
) -> None:
    assert chain_settings.data_dir is not None
    other = dataclasses.replace(chain_settings, data_dir=tmp_path / "other")
    for settings, value in ((chain_settings, 1), (other, 2)):
        with closing(open_embedded(settings, clock)) as chain:
            chain.submit(transfer(chain, admin, operator.address, value))
    remove_state(chain_settings.data_dir)
    shutil.copy(tmp_path / "other" / "evm-state.sqlite", chain_settings.data_dir)

    with pytest.raises(LedgerCorrupted) as caught:
        open_embedded(chain_settings, clock).close()

    assert "block 1 differs" in caught.value.message


def test_logged_block_that_replays_to_another_hash_is_refused(
    recorded: ChainSettings, clock: Callable[[], float]
) -> None:
    assert recorded.data_dir is not None
    log_path = recorded.data_dir / "transactions.log"
    log = log_path.read_bytes()
    last = record_offsets(log)[-1]
    fields = cbor2.loads(log[last + RECORD_HEADER.size :])
    fields["ts"] += 1
    body = cbor2.dumps(fields, canonical=True)
    log_path.write_bytes(log[:last] + frame_header(body) + body)
    remove_state(recorded.data_dir)

    with pytest.raises(LedgerCorrupted) as caught:
        open_embedded(recorded, clock).close()

    assert f"re-applied block {fields['n']}" in caught.value.message
