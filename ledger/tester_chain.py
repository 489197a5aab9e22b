"""The embedded chain: eth-tester's py-evm backend, deterministic and persistent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from eth.db.atomic import AtomicDB
from eth.vm.forks.byzantium.constants import EIP658_TRANSACTION_STATUS_CODE_SUCCESS
from eth_tester.backends.pyevm.main import (
    PyEVMBackend,
    get_default_genesis_params,
    setup_tester_chain,
)
from eth_tester.exceptions import TransactionFailed
from eth_utils.address import to_canonical_address
from eth_utils.crypto import keccak

from ledger.chain import BlockRef, Chain, ChainSettings, RawLog, Receipt
from ledger.errors import ChainError, LedgerCorrupted, TransactionReverted
from ledger.statedb import StateStore
from ledger.txlog import LoggedBlock, TxLog

GENESIS_BALANCE = 10**30
GAS_LIMIT = 30_000_000
PRIORITY_FEE = 10**9
CALL_GAS = 25_000_000
_MIX_DOMAIN = b"vmsnap/prevrandao/"

log = logging.getLogger("vmsnap.chain")


def genesis_for(settings: ChainSettings) -> tuple[dict[str, Any], dict[bytes, dict[str, Any]]]:
    """Return the genesis header fields and funded accounts every replica shares."""
    params: dict[str, Any] = get_default_genesis_params(
        {"timestamp": settings.genesis_timestamp, "gas_limit": GAS_LIMIT}
    )
    state: dict[bytes, dict[str, Any]] = {
        to_canonical_address(account): {
            "balance": GENESIS_BALANCE,
            "nonce": 0,
            "code": b"",
            "storage": {},
        }
        for account in settings.funded
    }
    return params, state


class EmbeddedChain(Chain):
    """A py-evm chain hosted in this process, one block per transaction.

    Deterministic: block timestamps are chosen here and recorded, and the
    per-block mix-hash is derived from the parent hash instead of drawn at
    random, so replicas fed the same log reach the same block hashes.

    Persistent, in ``data_dir``::

        transactions.log    every block's raw transaction, timestamp and hash (TxLog)
        evm-state.sqlite    py-evm's database, checkpointed after every block (StateStore)

    On open, the state checkpoint must agree with the log at its head block;
    the log's tail beyond it is re-applied, and every re-applied block's hash
    must equal the recorded one.
    """

    backend = "eth-tester"

    def __init__(
        self,
        state: StateStore,
        txlog: TxLog,
        settings: ChainSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._txlog = txlog
        self._clock = clock
        params, genesis_state = genesis_for(settings)
        configured = setup_tester_chain(params, genesis_state or None)[1]
        chain_class = type(configured)
        if state.empty:
            self._evm = chain_class.from_genesis(AtomicDB(state), params, genesis_state)
            state.checkpoint()
        else:
            self._evm = chain_class(AtomicDB(state))
        self.chain_id = int(self._evm.chain_id)
        self._tester = PyEVMBackend.__new__(PyEVMBackend)
        self._tester.chain = self._evm
        self._tester.account_keys = ()
        self._check_genesis(bytes(configured.get_canonical_head().hash))
        self._recover()

    @classmethod
    def open(cls, settings: ChainSettings, clock: Callable[[], float] = time.time) -> EmbeddedChain:
        """Open (or create) the embedded chain kept in ``settings.data_dir``."""
        assert settings.data_dir is not None
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = StateStore(settings.data_dir / "evm-state.sqlite")
        try:
            txlog = TxLog(settings.data_dir / "transactions.log")
        except BaseException:
            state.close()
            raise
        try:
            return cls(state, txlog, settings, clock)
        except BaseException:
            state.close()
            txlog.close()
            raise

    @property
    def blocks(self) -> list[LoggedBlock]:
        """The recorded blocks, genesis first (what a replica is fed)."""
        return list(self._txlog.blocks)

    def logged(self, first: int, last: int) -> list[LoggedBlock]:
        """The recorded blocks `first` to `last` (inclusive, as far as recorded), no more."""
        return self._txlog.blocks[max(first, 0) : last + 1]

    def submit(self, raw_tx: bytes) -> Receipt:
        """Apply, mine, log durably and checkpoint one transaction."""
        return self.apply(raw_tx, None)

    def apply(self, raw_tx: bytes, timestamp: int | None) -> Receipt:
        """Mine `raw_tx` in a new block at `timestamp` (now when None) and record it."""
        parent = self._evm.get_canonical_head()
        if timestamp is None:
            timestamp = max(parent.timestamp + 1, int(self._clock()))
        block_hash = self._mine(raw_tx, timestamp)
        self._txlog.append(LoggedBlock(parent.block_number + 1, timestamp, raw_tx, block_hash))
        self._state.checkpoint()
        return self._receipt(parent.block_number + 1)

    def call(self, sender: bytes, to: bytes, data: bytes) -> bytes:
        """Run a read-only call against the latest block."""
        return self.call_at(sender, to, data, "latest")

    def call_at(self, sender: bytes, to: bytes, data: bytes, block: int | str) -> bytes:
        """Run a read-only call against the state after block `block` (a number or "latest")."""
        request = {"from": sender, "to": to, "data": data, "gas": CALL_GAS, "value": 0}
        try:
            return bytes(self._tester.call(request, block))
        except TransactionFailed as err:
            raise TransactionReverted(_reason(err)) from err

    def nonce(self, account: bytes) -> int:
        """Return the account's nonce at the head."""
        return int(self._tester.get_nonce(account, "latest"))

    def balance(self, account: bytes) -> int:
        """Return the account's balance at the head."""
        return int(self._tester.get_balance(account, "latest"))

    def fee_caps(self) -> tuple[int, int]:
        """Twice the pending base fee plus the tip, so a fee rise cannot strand a transaction."""
        base = int(self._evm.header.base_fee_per_gas)
        return 2 * base + PRIORITY_FEE, PRIORITY_FEE

    def gas_limit(self) -> int:
        """Return the pending block's gas limit."""
        return int(self._evm.header.gas_limit)

    def head(self) -> BlockRef:
        """Return the latest mined block."""
        header = self._evm.get_canonical_head()
        return BlockRef(header.block_number, bytes(header.hash), header.timestamp)

    def block(self, number: int) -> BlockRef:
        """Return the canonical block `number`."""
        header = self._evm.get_canonical_block_header_by_number(number)
        return BlockRef(header.block_number, bytes(header.hash), header.timestamp)

    def logs(self, address: bytes, from_block: int, to_block: int) -> list[RawLog]:
        """Scan the canonical blocks in range for logs of `address`."""
        found: list[RawLog] = []
        last = min(to_block, self._evm.get_canonical_head().block_number)
        for number in range(max(from_block, 0), last + 1):
            found.extend(r for r in self._block_logs(number) if r.address == address)
        return found

    def close(self) -> None:
        """Close the state database and the log."""
        self._state.close()
        self._txlog.close()

    def _mine(self, raw_tx: bytes, timestamp: int) -> bytes:
        evm = self._evm
        parent = evm.get_canonical_head()
        try:
            tx = evm.get_vm().get_transaction_builder().decode(raw_tx)
            evm.header = evm.header.copy(timestamp=timestamp)
            evm.apply_transaction(tx)
        except Exception as err:  # py-evm validation errors have no common base
            raise ChainError(f"the embedded chain refused the transaction: {err}") from err
        block = evm.mine_block(mix_hash=keccak(_MIX_DOMAIN + parent.hash), blob_gas_used=0)
        return bytes(block.hash)

    def _check_genesis(self, configured: bytes) -> None:
        genesis = self._evm.get_canonical_block_header_by_number(0)
        if genesis.hash != configured:
            raise LedgerCorrupted(
                "the stored genesis block differs from the configured one "
                "(was chain.genesis_timestamp or the operator key changed?)"
            )
        if not self._txlog.blocks:
            self._txlog.append(LoggedBlock(0, genesis.timestamp, b"", bytes(genesis.hash)))
        elif self._txlog.blocks[0].block_hash != genesis.hash:
            raise LedgerCorrupted(
                "the genesis block differs from the one in the transaction log "
                "(was chain.genesis_timestamp or the operator key changed?)"
            )

    def _recover(self) -> None:
        head = self._evm.get_canonical_head()
        blocks = self._txlog.blocks
        if head.block_number >= len(blocks):
            raise LedgerCorrupted(
                f"the state checkpoint is at block {head.block_number}, "
                f"beyond the transaction log's {len(blocks) - 1}"
            )
        if blocks[head.block_number].block_hash != head.hash:
            raise LedgerCorrupted(f"block {head.block_number} differs from the transaction log")
        tail = blocks[head.block_number + 1 :]
        for block in tail:
            mined = self._mine(block.raw_tx, block.timestamp)
            if mined != block.block_hash:
                raise LedgerCorrupted(
                    f"re-applied block {block.number} has hash 0x{mined.hex()}, "
                    f"the log recorded 0x{block.block_hash.hex()}"
                )
        if tail:
            self._state.checkpoint()
            log.info("re-applied %d block(s) from the transaction log", len(tail))

    def _receipt(self, number: int) -> Receipt:
        block = self._evm.get_canonical_block_by_number(number)
        tx = block.transactions[0]
        receipt = block.get_receipts(self._evm.chaindb)[0]
        created = None
        if not tx.to:
            from eth._utils.address import generate_contract_address

            created = bytes(generate_contract_address(tx.sender, tx.nonce))
        return Receipt(
            tx_hash=bytes(tx.hash),
            status=1 if receipt.state_root == EIP658_TRANSACTION_STATUS_CODE_SUCCESS else 0,
            block_number=number,
            block_hash=bytes(block.hash),
            gas_used=receipt.gas_used,
            contract_address=created,
            logs=tuple(self._block_logs(number)),
        )

    def _block_logs(self, number: int) -> list[RawLog]:
        block = self._evm.get_canonical_block_by_number(number)
        found: list[RawLog] = []
        receipts = block.get_receipts(self._evm.chaindb)
        index = 0
        for tx, receipt in zip(block.transactions, receipts, strict=True):
            for entry in receipt.logs:
                found.append(
                    RawLog(
                        address=bytes(entry.address),
                        topics=tuple(t.to_bytes(32, "big") for t in entry.topics),
                        data=bytes(entry.data),
                        block_number=number,
                        tx_hash=bytes(tx.hash),
                        log_index=index,
                    )
                )
                index += 1
        return found


def _reason(err: TransactionFailed) -> str:
    text = str(err.args[0]) if err.args else str(err)
    return text.removeprefix("execution reverted: ").strip("'\"") or "reverted"
