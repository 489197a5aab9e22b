"""The ledger as the controller uses it: the contract and the projection, kept in step."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rlp
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

import contracts
from ledger import access, events
from ledger.audit import AuditReport, audit_records
from ledger.chain import Chain, ChainSettings, open_chain
from ledger.contract import (
    Entry,
    LedgerContract,
    LedgerRecord,
    SnapshotStatus,
    operator_account,
)
from ledger.errors import (
    ChainError,
    ContractError,
    KeyNotHeld,
    LedgerCorrupted,
    Unauthorised,
)
from ledger.projection import Projection

log = logging.getLogger("vmsnap.ledger")
DELETING = (SnapshotStatus.DELETED, SnapshotStatus.RETIRED)
ADMIN_SETTING = "deployment.admin_key_file"
DELETER_SETTING = "deployment.deleter_key_file"


@dataclass(frozen=True)
class LedgerSettings:
    """Everything the ledger needs, passed down from the configuration.

    The keys are hex private keys (see ``ledger.access``). `admin_key` and
    `deleter_key` are None when the operator key plays that part too (a one-key
    deployment), and "" when the deployment has such a key but this process
    does not hold it.

    The keys and the database URL (which may carry a password) stay out of its repr.
    """

    deployment: str
    chain: ChainSettings
    projection_url: str = field(repr=False)
    state_file: Path
    operator_key: str = field(repr=False)
    contract_address: str = ""
    contract_cache: Path | None = None
    admin_key: str | None = field(default=None, repr=False)
    deleter_key: str | None = field(default=None, repr=False)


class Ledger:
    """A deployment's ledger: appends go to the contract, then into the projection.

    ``state_file`` (JSON) remembers the contract address, the block it was
    deployed in and whether the operator and deleter were enrolled, so a
    restart attaches instead of deploying again. `contract` signs as the
    operator; `deleter` signs deletions (None when this process lacks the key).
    """

    def __init__(
        self,
        chain: Chain,
        contract: LedgerContract,
        projection: Projection,
        deploy_block: int,
        clock: Callable[[], float],
        deleter: LedgerContract | None = None,
    ) -> None:
        self.chain = chain
        self.contract = contract
        self.projection = projection
        self.deploy_block = deploy_block
        self.deleter = deleter
        self._clock = clock

    @classmethod
    def open(
        cls,
        settings: LedgerSettings,
        clock: Callable[[], float] = time.time,
        wrap: Callable[[Chain], Chain] | None = None,
    ) -> Ledger:
        """Open the chain, attach to (or deploy) the contract and catch the projection up.

        `wrap` puts a layer around the opened chain (the controller's replication).
        """
        chain = open_chain(settings.chain, clock)
        if wrap is not None:
            chain = wrap(chain)
        try:
            contract, deploy_block = _attach_or_deploy(chain, settings)
            deleter = _signer(contract, settings.deleter_key, "deleter key")
            projection = Projection(settings.projection_url)
        except BaseException:
            chain.close()
            raise
        ledger = cls(chain, contract, projection, deploy_block, clock, deleter)
        try:
            if contract.count() == 0:
                ledger.append([Entry(ledger.opened_event(settings.deployment), 0)])
            ledger.catch_up()
        except BaseException:
            ledger.close()
            raise
        return ledger

    def now_ms(self) -> int:
        """The controller's clock in Unix milliseconds."""
        return int(self._clock() * 1000)

    def opened_event(self, deployment: str) -> events.LedgerOpened:
        """The first event of every ledger."""
        return events.LedgerOpened(
            at_ms=self.now_ms(),
            deployment=deployment,
            contract=self.contract.address_hex,
            chain_id=self.chain.chain_id,
        )

    def append(self, entries: Sequence[Entry], deleting: bool = False) -> list[LedgerRecord]:
        """Append `entries` in one transaction and fold them into the projection.

        The deleter signs when `deleting` or when an entry marks a snapshot
        deleted or retired; the operator signs everything else.
        """
        deletes = any(e.fact is not None and e.fact.status in DELETING for e in entries)
        signer = self.deleter_contract() if deleting or deletes else self.contract
        if self.chain.settle():
            self.catch_up()
        records = signer.append(entries)
        self.projection.apply(records)
        return records

    def deleter_contract(self) -> LedgerContract:
        """The contract as the deleter drives it; KeyNotHeld when this process lacks the key."""
        if self.deleter is None:
            raise KeyNotHeld("deleter", DELETER_SETTING, "deleting snapshots")
        return self.deleter

    def check_deleter(self) -> None:
        """Refuse, before anything is touched, a deletion this ledger could not record."""
        signer = self.deleter_contract()
        address = signer.account.address
        if signer.roles(address) & access.DELETER_ROLES != access.DELETER_ROLES:
            raise Unauthorised(address, "not enrolled as deleter; nothing was changed")

    def access(self) -> list[dict[str, Any]]:
        """Every account ever given roles, with its roles now and who signs as it here."""
        here: dict[str, str] = {str(self.contract.account.address): "operator"}
        if self.deleter is not None:
            here[str(self.deleter.account.address)] = (
                "operator, deleter" if self.deleter is self.contract else "deleter"
            )
        rows = access.accounts(self.contract, self.deploy_block)
        return [{**row, "signs_here_as": here.get(str(row["account"]), "")} for row in rows]

    def grant(self, admin_key: str | None, account: str, roles: int) -> int:
        """Give `account` exactly `roles`, signed by the admin; return the wei sent it for gas."""
        admin = self._admin(admin_key)
        address = access.checked_address(account)
        admin.enrol(address, roles)
        return access.top_up(admin, address)

    def revoke(self, admin_key: str | None, account: str) -> None:
        """Take every role from `account`, signed by the admin."""
        self._admin(admin_key).remove(access.checked_address(account))

    def _admin(self, admin_key: str | None) -> LedgerContract:
        signer = _signer(self.contract, admin_key, "admin key")
        if signer is None:
            raise KeyNotHeld("admin", ADMIN_SETTING, "changing who may write to the ledger")
        if self.deleter is not None and signer.account.address == self.deleter.account.address:
            return self.deleter
        return signer

    def catch_up(self) -> int:
        """Fold every event the projection has not seen yet; return how many."""
        seq, block = self.projection.checkpoint()
        if seq >= self.contract.count():
            return 0
        records = self.contract.records(max(block, self.deploy_block))
        applied = self.projection.apply(records)
        if applied:
            log.info("projection caught up by %d event(s)", applied)
        return applied

    def records(self) -> list[LedgerRecord]:
        """Every event on the contract, in order."""
        return self.contract.records(self.deploy_block)

    def verify(self) -> tuple[AuditReport, Projection]:
        """Audit the chain's events against the contract, and the projection against a replay."""
        records = self.records()
        report = audit_records(records, self.contract.head(), self.contract.count())
        fresh = Projection("sqlite://")
        try:
            fresh.apply(records)
        except LedgerCorrupted as err:
            report.problems.append(f"replay failed: {err}")
            return report, fresh
        report.projection_matches = fresh.dump() == self.projection.dump()
        if not report.projection_matches:
            report.problems.append("the projection differs from a fresh replay of the ledger")
        return report, fresh

    def replay(self) -> int:
        """Rebuild the projection from the chain; return the number of events applied."""
        self.projection.reset()
        return self.projection.apply(self.records())

    def head(self) -> dict[str, Any]:
        """The contract's head, count and the chain's latest block."""
        block = self.chain.head()
        return {
            "contract": self.contract.address_hex,
            "count": self.contract.count(),
            "head": "0x" + self.contract.head().hex(),
            "chain_id": self.chain.chain_id,
            "backend": self.chain.backend,
            "block": block.number,
            "block_hash": "0x" + block.hash.hex(),
            "block_timestamp": block.timestamp,
        }

    def close(self) -> None:
        """Close the projection and the chain."""
        self.projection.close()
        self.chain.close()


def _signer(contract: LedgerContract, key: str | None, what: str) -> LedgerContract | None:
    """The contract driven by `key`: the operator's own when None, None when not held."""
    if key is None:
        return contract
    if not key:
        return None
    account = operator_account(key, what)
    if account.address == contract.account.address:
        return contract
    return contract.signed_by(account)


def _attach_or_deploy(chain: Chain, settings: LedgerSettings) -> tuple[LedgerContract, int]:
    account = operator_account(settings.operator_key)
    try:
        compiled = contracts.load(cache_dir=settings.contract_cache)
    except contracts.CompileFailed as err:
        raise ContractError(str(err)) from err
    state = _read_state(settings.state_file)
    address = settings.contract_address or state.get("contract", "")
    if address:
        contract = LedgerContract(chain, compiled, _addr(address), account)
        if state.get("deployed") or settings.contract_address or _has_code(contract):
            if not state.get("deployed"):
                state = {**state, "contract": address, "deployed": True}
                _write_state(settings.state_file, state)
            if state.get("enrolled") is False:
                _enrol(contract, settings, state)
            return contract, int(state.get("block", 0))
    return _deploy(chain, LedgerContract(chain, compiled, b"", account), settings)


def _deploy(
    chain: Chain, operator: LedgerContract, settings: LedgerSettings
) -> tuple[LedgerContract, int]:
    """Deploy with the admin key, then enrol the operator and the deleter."""
    admin = _signer(operator, settings.admin_key, "admin key")
    if admin is None:
        raise KeyNotHeld("admin", ADMIN_SETTING, "deploying the ledger contract")
    nonce = chain.nonce(bytes.fromhex(admin.account.address[2:]))
    predicted = _contract_address(admin.account.address, nonce)
    _write_state(
        settings.state_file,
        {"contract": predicted, "block": chain.head().number, "deployed": False},
    )
    deployed, receipt = LedgerContract.deploy(chain, admin.compiled, admin.account)
    if deployed.address_hex != predicted:
        raise LedgerCorrupted(f"deployed at {deployed.address_hex}, expected {predicted}")
    state = {"contract": predicted, "block": receipt.block_number, "deployed": True}
    if admin is operator:
        _write_state(settings.state_file, state)
        return deployed, receipt.block_number
    state["enrolled"] = False
    _write_state(settings.state_file, state)
    operator.address = deployed.address
    _enrol(operator, settings, state, deployed)
    return operator, receipt.block_number


def _enrol(
    contract: LedgerContract,
    settings: LedgerSettings,
    state: dict[str, Any],
    admin: LedgerContract | None = None,
) -> None:
    """Give the operator and (when held here) the deleter their roles; record that it is done."""
    if admin is None:
        admin = _signer(contract, settings.admin_key, "admin key")
        if admin is None:
            raise KeyNotHeld("admin", ADMIN_SETTING, "enrolling the operator and deleter")
    admin.enrol(contract.account.address, access.OPERATOR_ROLES)
    deleter = _signer(contract, settings.deleter_key, "deleter key")
    if deleter is not None and deleter is not contract:
        admin.enrol(deleter.account.address, access.DELETER_ROLES)
    _write_state(settings.state_file, {**state, "enrolled": True})


def _has_code(contract: LedgerContract) -> bool:
    try:
        contract.count()
    except ChainError:
        return False
    return True


def _contract_address(sender: str, nonce: int) -> str:
    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


def _addr(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except ValueError as err:
        raise LedgerCorrupted(f"{path} is not valid JSON") from err
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as out:
        json.dump(state, out)
        out.flush()
        os.fsync(out.fileno())
    Path(tmp).replace(path)
