from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ledger import events, vm
from ledger.audit import ZERO32, AuditReport, audit_records, chain_head, leaf_hash
from ledger.chain import ChainSettings
from ledger.contract import Entry, Fact, LedgerRecord, SnapshotStatus
from ledger.errors import LedgerCorrupted
from ledger.service import Ledger, LedgerSettings

ROOT = events.Disk("system", "root", 1 << 30)
Records = list[LedgerRecord]


def registration(name: str, at_ms: int = 1_000) -> events.VmRegistered:
    return vm.registration(name, "kvm", "10.0.0.1", [ROOT], at_ms=at_ms)


@dataclass(frozen=True)
class History:
    """Records read from a closed ledger, with the contract's head and count."""

    records: Records
    head: bytes
    count: int


@pytest.fixture(scope="module")
def history(
    tmp_path_factory: pytest.TempPathFactory, admin: LocalAccount, contract_cache: Path
) -> History:
    """Five events: LedgerOpened, web with a snapshot fact, then db, cache and dns in one batch."""
    folder = tmp_path_factory.mktemp("audited")
    settings = LedgerSettings(
        deployment="audited",
        chain=ChainSettings(data_dir=folder / "chain", funded=(admin.address,)),
        projection_url=f"sqlite:///{folder / 'projection.sqlite'}",
        state_file=folder / "state.json",
        operator_key=admin.key.hex(),
        contract_cache=contract_cache,
    )
    with closing(Ledger.open(settings)) as ledger:
        fact = Fact(keccak(text="snapshot"), SnapshotStatus.COMMITTED, keccak(text="root"))
        ledger.append([Entry(registration("web"), 0, fact)])
        ledger.append([Entry(registration(name), 0) for name in ("db", "cache", "dns")])
        found = History(ledger.records(), ledger.contract.head(), ledger.contract.count())
    assert found.count == len(found.records) == 5
    return found


@pytest.fixture
def records(history: History) -> Records:
    return history.records


def audit(records: Records, history: History) -> AuditReport:
    return audit_records(records, history.head, history.count)


def test_audit_of_the_records_on_chain_is_ok(records: Records, history: History) -> None:
    report = audit(records, history)

    assert report.ok, report.problems
    assert report.events == report.contract_count == 5
    assert report.head == report.contract_head == "0x" + history.head.hex()
    assert report.projection_matches is None


def test_hash_chain_recomputed_from_the_records_equals_the_contract_head(
    records: Records, history: History
) -> None:
    assert chain_head(records) == history.head
    assert keccak(ZERO32 + leaf_hash(records[0])) == records[0].head
    assert chain_head(records[2:], start=records[1].head) == history.head


def test_audit_of_an_empty_ledger_is_ok() -> None:
    report = audit_records([], ZERO32, 0)

    assert report.ok
    assert report.head == "0x" + ZERO32.hex()


def other_payload(record: LedgerRecord) -> LedgerRecord:
    event = record.event
    assert isinstance(event, events.VmRegistered)
    return dataclasses.replace(
        record, payload=events.encode(dataclasses.replace(event, ip="10.6.6.6"))
    )


ALTERATIONS: dict[str, Callable[[LedgerRecord], LedgerRecord]] = {
    "payload": other_payload,
    "undecodable-payload": lambda r: dataclasses.replace(r, payload=b"\x00"),
    "head": lambda r: dataclasses.replace(r, head=keccak(r.head)),
    "root": lambda r: dataclasses.replace(r, root=keccak(text="forged root")),
    "subject": lambda r: dataclasses.replace(r, subject=keccak(text="forged id")),
    "status": lambda r: dataclasses.replace(r, status=SnapshotStatus.DELETED),
    "version": lambda r: dataclasses.replace(r, version=r.version + 1),
    "stream": lambda r: dataclasses.replace(r, stream_id=events.stream_id("vm/db")),
}


@pytest.mark.parametrize("alteration", ALTERATIONS.values(), ids=ALTERATIONS.keys())
@pytest.mark.parametrize("position", [1, 3, 4])
def test_altering_one_field_of_one_record_is_reported(
    records: Records,
    history: History,
    alteration: Callable[[LedgerRecord], LedgerRecord],
    position: int,
) -> None:
    altered = [*records]
    altered[position] = alteration(records[position])

    report = audit(altered, history)

    assert not report.ok
    assert any(f"event {position + 1}" in problem for problem in report.problems)


def test_altered_payload_is_reported_as_a_head_mismatch(records: Records, history: History) -> None:
    altered = [*records]
    altered[2] = other_payload(records[2])

    report = audit(altered, history)

    assert len(report.problems) == 1
    assert report.problems[0].endswith("event 3: logged head does not match its contents")


def test_dropped_middle_record_is_reported_missing(records: Records, history: History) -> None:
    report = audit(records[:2] + records[3:], history)

    assert not report.ok
    assert report.problems[0] == "event 3 is missing (found 4)"


def test_dropped_first_record_is_reported_missing(records: Records, history: History) -> None:
    report = audit(records[1:], history)

    assert report.problems[0] == "event 1 is missing (found 2)"


def test_dropped_last_record_is_reported_against_the_contract(
    records: Records, history: History
) -> None:
    report = audit(records[:-1], history)

    assert set(report.problems) == {
        "the recomputed head differs from the contract's head",
        "4 events found, the contract counts 5",
    }


def test_repeated_record_is_reported(records: Records, history: History) -> None:
    report = audit([*records[:3], records[2], *records[3:]], history)

    assert not report.ok


def test_swapped_records_are_reported(records: Records, history: History) -> None:
    report = audit([*records[:2], records[3], records[2], records[4]], history)

    assert not report.ok


def test_contract_head_other_than_the_recomputed_one_is_reported(records: Records) -> None:
    report = audit_records(records, keccak(text="another head"), len(records))

    assert report.problems == ["the recomputed head differs from the contract's head"]
    assert report.head == "0x" + records[-1].head.hex()
    assert report.contract_head == "0x" + keccak(text="another head").hex()


def test_contract_count_other_than_the_number_of_records_is_reported(records: Records) -> None:
    report = audit_records(records, records[-1].head, 6)

    assert report.problems == ["5 events found, the contract counts 6"]


def test_chain_head_refuses_a_record_whose_logged_head_does_not_match(
    records: Records,
) -> None:
    altered = [*records]
    altered[1] = other_payload(records[1])

    with pytest.raises(LedgerCorrupted) as caught:
        chain_head(altered)

    assert "event 2" in caught.value.message
