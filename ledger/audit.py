"""Audit: recompute the hash chain from the events and check the contract and the projection."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from eth_utils.crypto import keccak

from ledger import events
from ledger.contract import LedgerRecord
from ledger.errors import LedgerCorrupted

ZERO32 = bytes(32)


def leaf_hash(record: LedgerRecord) -> bytes:
    """The hash the contract folds into its chain for one entry."""
    return keccak(
        record.seq.to_bytes(32, "big")
        + record.stream_id
        + record.version.to_bytes(32, "big")
        + record.subject
        + record.root
        + record.status.to_bytes(32, "big")
        + keccak(record.payload)
    )


def chain_head(records: Sequence[LedgerRecord], start: bytes = ZERO32) -> bytes:
    """Fold `records` into a hash-chain head, checking each logged head on the way."""
    head = start
    for record in records:
        head = keccak(head + leaf_hash(record))
        if head != record.head:
            raise LedgerCorrupted(f"event {record.seq}: logged head does not match its contents")
    return head


@dataclass
class AuditReport:
    """What an audit checked and what it found."""

    events: int = 0
    head: str = ""
    contract_head: str = ""
    contract_count: int = 0
    projection_matches: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing disagreed."""
        return not self.problems


def audit_records(
    records: Sequence[LedgerRecord], contract_head: bytes, contract_count: int
) -> AuditReport:
    """Check sequence, stream versions, payloads and the hash chain against the contract."""
    report = AuditReport(
        events=len(records), contract_head="0x" + contract_head.hex(), contract_count=contract_count
    )
    versions: Counter[bytes] = Counter()
    for expected_seq, record in enumerate(records, start=1):
        if record.seq != expected_seq:
            report.problems.append(f"event {expected_seq} is missing (found {record.seq})")
            return report
        versions[record.stream_id] += 1
        if record.version != versions[record.stream_id]:
            report.problems.append(
                f"event {record.seq}: stream version {record.version} out of order"
            )
        try:
            event = record.event
        except LedgerCorrupted as err:
            report.problems.append(f"event {record.seq}: {err}")
            continue
        if events.stream_id(event.stream) != record.stream_id:
            report.problems.append(
                f"event {record.seq}: logged on a stream other than {event.stream}"
            )
    try:
        head = chain_head(records)
    except LedgerCorrupted as err:
        report.problems.append(str(err))
        return report
    report.head = "0x" + head.hex()
    if head != contract_head:
        report.problems.append("the recomputed head differs from the contract's head")
    if len(records) != contract_count:
        report.problems.append(f"{len(records)} events found, the contract counts {contract_count}")
    return report
