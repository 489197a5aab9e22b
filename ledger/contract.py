"""The client of the SnapshotLedger contract: deploy, append batches, read views and events."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3

from contracts import CompiledContract
from ledger import events
from ledger.chain import Chain, RawLog, Receipt
from ledger.errors import (
    ChainError,
    InputError,
    TransactionReverted,
    Unauthorised,
    VersionConflict,
)

MAX_BATCH = 32
MAX_PAYLOAD = 2048
ROLE_OPERATOR = 1
ROLE_DELETER = 2
ROLE_ALL = ROLE_OPERATOR | ROLE_DELETER
_APPENDED = keccak(
    text="Appended(uint256,bytes32,bytes32,uint256,bytes32,uint8,bytes,bytes32,address)"
)
_APPENDED_DATA = ["uint256", "bytes32", "uint8", "bytes", "bytes32", "address"]
_AUTH_REASONS = ("not an operator", "not allowed to delete", "only the admin")
ZERO32 = bytes(32)


class SnapshotStatus(enum.IntEnum):
    """A snapshot's status as the contract records it."""

    NONE = 0
    PENDING = 1
    COMMITTED = 2
    FAILED = 3
    DELETED = 4
    RETIRED = 5


@dataclass(frozen=True)
class Fact:
    """An audit fact an entry records about a snapshot: its id, root and new status."""

    subject: bytes
    status: SnapshotStatus
    root: bytes = ZERO32


@dataclass(frozen=True)
class Entry:
    """One event to append, with the stream version the caller expects it to follow."""

    event: events.Event
    expected_version: int
    fact: Fact | None = None


@dataclass(frozen=True)
class LedgerRecord:
    """One appended event as the contract logged it, with where it landed."""

    seq: int
    stream_id: bytes
    version: int
    subject: bytes
    root: bytes
    status: int
    payload: bytes
    head: bytes
    sender: str
    block_number: int
    tx_hash: bytes
    log_index: int

    @property
    def event(self) -> events.Event:
        """The decoded event."""
        return events.decode(self.payload)


@dataclass(frozen=True)
class SnapshotView:
    """The contract's audit record of one snapshot."""

    vm_stream: bytes
    root: bytes
    status: SnapshotStatus
    previous: bytes
    seq: int
    updated_at: int
    updated_by: str


class LedgerContract:
    """A deployed SnapshotLedger, driven by one signing account."""

    def __init__(
        self, chain: Chain, compiled: CompiledContract, address: bytes, account: LocalAccount
    ) -> None:
        self.chain = chain
        self.compiled = compiled
        self.address = address
        self.account = account
        self._abi = Web3().eth.contract(abi=compiled.abi)
        self._outputs = {
            item["name"]: [_abi_type(o) for o in item.get("outputs", [])]
            for item in compiled.abi
            if item.get("type") == "function"
        }
        self._nonce: int | None = None
        self._sender = bytes.fromhex(account.address[2:])

    @classmethod
    def deploy(
        cls, chain: Chain, compiled: CompiledContract, account: LocalAccount
    ) -> tuple[LedgerContract, Receipt]:
        """Deploy a fresh contract; `account` becomes its admin and an operator."""
        client = cls(chain, compiled, b"", account)
        receipt = client._transact(None, compiled.bytecode, 2_000_000)
        if receipt.status != 1 or receipt.contract_address is None:
            raise ChainError("deploying the ledger contract failed")
        client.address = receipt.contract_address
        return client, receipt

    def signed_by(self, account: LocalAccount) -> LedgerContract:
        """The same contract, driven by another account (with its own nonce)."""
        return LedgerContract(self.chain, self.compiled, self.address, account)

    @property
    def address_hex(self) -> str:
        """The contract address, checksummed."""
        return to_checksum_address(self.address)

    # -- writes ---------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[LedgerRecord]:
        """Append `entries` in one transaction; return their records in order."""
        if not 0 < len(entries) <= MAX_BATCH:
            raise InputError(f"a batch holds 1 to {MAX_BATCH} events, not {len(entries)}")
        rows = [_entry_row(entry) for entry in entries]
        data = bytes.fromhex(self._abi.encode_abi("append", args=[rows])[2:])
        gas = 80_000 + sum(
            _entry_gas(entry, row[5]) for entry, row in zip(entries, rows, strict=True)
        )
        receipt = self._transact(self.address, data, min(gas, self.chain.gas_limit()))
        if receipt.status != 1:
            self._diagnose(data, entries)
        return [rec for rec in map(self._record, receipt.logs) if rec is not None]

    def enrol(self, account: str, roles: int = ROLE_ALL) -> Receipt:
        """Grant `roles` to `account` (admin only)."""
        return self._checked("enrol", [to_checksum_address(account), roles], 120_000)

    def remove(self, account: str) -> Receipt:
        """Revoke every role of `account` (admin only)."""
        return self._checked("remove", [to_checksum_address(account)], 120_000)

    def send_ether(self, account: str, wei: int) -> Receipt:
        """Send `wei` from this contract client's account to `account` (gas for its appends)."""
        receipt = self._transact(bytes.fromhex(account[2:]), b"", 21_000, wei)
        if receipt.status != 1:
            raise ChainError(f"sending ether to {account} failed")
        return receipt

    # -- views ----------------------------------------------------------------

    def head(self) -> bytes:
        """The hash-chain head over every event."""
        return bytes(self._view("head"))

    def count(self) -> int:
        """The global sequence number of the last event."""
        return int(self._view("count"))

    def stream_version(self, stream: str) -> int:
        """The number of events on `stream`."""
        return int(self._view("stream_version", events.stream_id(stream)))

    def roles(self, account: str) -> int:
        """The role bitmask of `account`."""
        return int(self._view("roles", to_checksum_address(account)))

    def admin(self) -> str:
        """The admin account."""
        return to_checksum_address(self._view("admin"))

    def latest_snapshot(self, vm: str) -> bytes:
        """The id of the VM's newest live snapshot (32 zero bytes if none)."""
        return bytes(self._view("latest_snapshot", events.stream_id(events.vm_stream(vm))))

    def live_snapshots(self, vm: str) -> int:
        """How many committed, undeleted snapshots the VM has."""
        return int(self._view("live_snapshots", events.stream_id(events.vm_stream(vm))))

    def committed_total(self, vm: str) -> int:
        """How many snapshots of the VM were ever committed, deleted or not."""
        return int(self._view("committed_total", events.stream_id(events.vm_stream(vm))))

    def retired(self, vm: str) -> list[bytes]:
        """The ids of the VM's snapshots deleted by a retention rule, in order of retirement."""
        stream = events.stream_id(events.vm_stream(vm))
        count = int(self._view("retired_count", stream))
        return [bytes(self._view("retired", stream, index)) for index in range(count)]

    def snapshot(self, subject: bytes) -> SnapshotView:
        """The audit record of snapshot `subject`."""
        vm, root, status, previous, seq, updated_at, updated_by = self._view("snapshot", subject)
        return SnapshotView(
            bytes(vm),
            bytes(root),
            SnapshotStatus(status),
            bytes(previous),
            int(seq),
            int(updated_at),
            to_checksum_address(updated_by),
        )

    # -- events ---------------------------------------------------------------

    def records(self, from_block: int = 0, to_block: int | None = None) -> list[LedgerRecord]:
        """Every Appended event in the block range, in sequence order."""
        last = self.chain.head().number if to_block is None else to_block
        found = (self._record(raw) for raw in self.chain.logs(self.address, from_block, last))
        return [rec for rec in found if rec is not None]

    # -- internals ------------------------------------------------------------

    def _view(self, name: str, *args: Any) -> Any:
        data = bytes.fromhex(self._abi.encode_abi(name, args=list(args))[2:])
        raw = self.chain.call(self._sender, self.address, data)
        try:
            values = abi_decode(self._outputs[name], raw)
        except DecodingError as err:
            raise ChainError(f"no ledger contract answers at {self.address_hex}") from err
        return values[0] if len(values) == 1 else values

    def _checked(self, name: str, args: list[Any], gas: int) -> Receipt:
        data = bytes.fromhex(self._abi.encode_abi(name, args=args)[2:])
        receipt = self._transact(self.address, data, gas)
        if receipt.status != 1:
            self._diagnose(data, ())
        return receipt

    def _transact(self, to: bytes | None, data: bytes, gas: int, value: int = 0) -> Receipt:
        if self._nonce is None:
            self._nonce = self.chain.nonce(self._sender)
        max_fee, tip = self.chain.fee_caps()
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain.chain_id,
            "nonce": self._nonce,
            "gas": gas,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
            "value": value,
            "data": data,
        }
        if to is not None:
            tx["to"] = to_checksum_address(to)
        raw = bytes(self.account.sign_transaction(tx).raw_transaction)
        try:
            receipt = self.chain.submit(raw)
        except ChainError:
            self._nonce = None
            raise
        self._nonce += 1
        return receipt

    def _diagnose(self, data: bytes, entries: Sequence[Entry]) -> None:
        try:
            self.chain.call(self._sender, self.address, data)
        except TransactionReverted as err:
            if err.reason == "stream version conflict":
                self._raise_conflict(entries, err)
            if err.reason.startswith(_AUTH_REASONS):
                raise Unauthorised(self.account.address, err.reason) from err
            raise
        raise ChainError("the ledger transaction ran out of gas")

    def _raise_conflict(self, entries: Sequence[Entry], err: TransactionReverted) -> None:
        """Name the first entry whose expected version the batch could not meet."""
        versions: dict[str, int] = {}
        for entry in entries:
            stream = entry.event.stream
            actual = versions.get(stream)
            if actual is None:
                actual = self.stream_version(stream)
            if actual != entry.expected_version:
                raise VersionConflict(stream, entry.expected_version, actual) from err
            versions[stream] = actual + 1

    def _record(self, raw: RawLog) -> LedgerRecord | None:
        if raw.address != self.address or not raw.topics or raw.topics[0] != _APPENDED:
            return None
        version, root, status, payload, head, sender = abi_decode(_APPENDED_DATA, raw.data)
        return LedgerRecord(
            seq=int.from_bytes(raw.topics[1], "big"),
            stream_id=raw.topics[2],
            version=version,
            subject=raw.topics[3],
            root=bytes(root),
            status=status,
            payload=bytes(payload),
            head=bytes(head),
            sender=to_checksum_address(sender),
            block_number=raw.block_number,
            tx_hash=raw.tx_hash,
            log_index=raw.log_index,
        )


def operator_account(private_key_hex: str, what: str = "operator key") -> LocalAccount:
    """Return the signing account for a hex private key (`what` names it in errors)."""
    try:
        account: LocalAccount = Account.from_key(
            bytes.fromhex(private_key_hex.strip().removeprefix("0x"))
        )
    except ValueError as err:
        raise InputError(f"the {what} is not a valid private key") from err
    return account


def _entry_row(entry: Entry) -> tuple[bytes, int, bytes, bytes, int, bytes]:
    payload = events.encode(entry.event)
    if len(payload) > MAX_PAYLOAD:
        raise InputError(
            f"{type(entry.event).__name__} is {len(payload)} bytes; the ledger takes {MAX_PAYLOAD}"
        )
    fact = entry.fact
    return (
        events.stream_id(entry.event.stream),
        entry.expected_version,
        fact.subject if fact else ZERO32,
        fact.root if fact else ZERO32,
        int(fact.status) if fact else 0,
        payload,
    )


def _entry_gas(entry: Entry, payload: bytes) -> int:
    return 60_000 + (200_000 if entry.fact else 0) + 48 * len(payload)


def _abi_type(output: dict[str, Any]) -> str:
    if output["type"] == "tuple":
        return "(" + ",".join(_abi_type(c) for c in output["components"]) + ")"
    return str(output["type"])
