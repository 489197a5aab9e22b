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
from ledger import events
from ledger.audit import AuditReport, audit_records
from ledger.chain import Chain, ChainSettings, open_chain
from ledger.contract import Entry, LedgerContract, LedgerRecord, operator_account
from ledger.errors import ChainError, ContractError, LedgerCorrupted
from ledger.projection import Projection

log = logging.getLogger("vmsnap.ledger")


@dataclass(frozen=True)
class LedgerSettings:
    """Everything the ledger needs, passed down from the configuration.

    The key and the database URL (which may carry a password) stay out of its repr.
    """

    deployment: str
    chain: ChainSettings
    projection_url: str = field(repr=False)
    state_file: Path
    operator_key: str = field(repr=False)
    contract_address: str = ""
    contract_cache: Path | None = None


class Ledger:
    """A deployment's ledger: appends go to the contract, then into the projection.

    ``state_file`` (JSON) remembers the contract address and the block it was
    deployed in, so a restart attaches instead of deploying again.
    """

    def __init__(
        self,
        chain: Chain,
        contract: LedgerContract,
        projection: Projection,
        deploy_block: int,
        clock: Callable[[], float],
    ) -> None:
        self.chain = chain
        self.contract = contract
        self.projection = projection
        self.deploy_block = deploy_block
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
            projection = Projection(settings.projection_url)
        except BaseException:
            chain.close()
            raise
        ledger = cls(chain, contract, projection, deploy_block, clock)
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

    def append(self, entries: Sequence[Entry]) -> list[LedgerRecord]:
        """Append `entries` in one transaction and fold them into the projection."""
        if self.chain.settle():
            self.catch_up()
        records = self.contract.append(entries)
        self.projection.apply(records)
        return records

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
                _write_state(settings.state_file, {**state, "contract": address, "deployed": True})
            return contract, int(state.get("block", 0))
    nonce = chain.nonce(bytes.fromhex(account.address[2:]))
    predicted = _contract_address(account.address, nonce)
    _write_state(
        settings.state_file,
        {"contract": predicted, "block": chain.head().number, "deployed": False},
    )
    contract, receipt = LedgerContract.deploy(chain, compiled, account)
    if contract.address_hex != predicted:
        raise LedgerCorrupted(f"deployed at {contract.address_hex}, expected {predicted}")
    _write_state(
        settings.state_file,
        {"contract": predicted, "block": receipt.block_number, "deployed": True},
    )
    return contract, receipt.block_number


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
