"""Schedules, their runs, retention policies and protection, as folded into the projection."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from ledger import events, vm
from ledger.contract import Entry, Fact, SnapshotStatus
from ledger.projection import Projection
from ledger.service import Ledger

ROOT = events.Disk("system", "root", 1 << 30)
RULES = events.RetentionRules(3, None, None, None, None, None, None, "Europe/Berlin")
NO_RULES = events.RetentionRules(None, None, None, None, None, None, None, "UTC")
SNAP = "ab" * 32


def append(ledger: Ledger, *batch: events.Event, fact: Fact | None = None) -> None:
    version = ledger.projection.stream_version(batch[0].stream)
    ledger.append(
        [Entry(e, version + i, fact if i == len(batch) - 1 else None) for i, e in enumerate(batch)]
    )


def with_vm(ledger: Ledger) -> None:
    append(ledger, vm.registration("web", "kvm", "10.0.0.1", (ROOT,), at_ms=1_000))


def scheduled(name: str = "nightly", at_ms: int = 2_000) -> events.ScheduleSet:
    return events.ScheduleSet(at_ms, "web", name, "wed 22:00", "Europe/Berlin", None, RULES)


def test_schedule_set_then_replaced_keeps_one_row_with_the_latest_text(ledger: Ledger) -> None:
    with_vm(ledger)
    append(ledger, scheduled())
    replaced = events.ScheduleSet(3_000, "web", "nightly", "daily 03:00", "UTC", None, NO_RULES)
    append(ledger, replaced)

    (row,) = ledger.projection.schedules("web")
    assert (row["name"], row["schedule"], row["tz"], row["set_at_ms"]) == (
        "nightly",
        "daily 03:00",
        "UTC",
        3_000,
    )
    assert row["retention"]["keep_last"] is None
    assert (row["taken"], row["skipped"], row["failed"], row["last_slot_ms"]) == (0, 0, 0, None)


def test_runs_count_by_outcome_and_a_taken_run_tags_its_snapshot(ledger: Ledger) -> None:
    with_vm(ledger)
    append(ledger, scheduled())
    requested = events.SnapshotRequested(4_000, SNAP, "web", ("root",), None)
    append(ledger, requested, fact=Fact(bytes.fromhex(SNAP), SnapshotStatus.PENDING))
    append(
        ledger,
        events.ScheduledRun(5_000, "web", "nightly", 4_000, "taken", SNAP, "", 1),
        events.ScheduledRun(6_000, "web", "nightly", 5_500, "skipped", None, "in flight", 1),
        events.ScheduledRun(7_000, "web", "nightly", 6_500, "failed", None, "unreachable", 3),
    )

    (row,) = ledger.projection.schedules("web")
    assert (row["taken"], row["skipped"], row["failed"]) == (1, 1, 1)
    assert (row["last_slot_ms"], row["last_outcome"]) == (6_500, "failed")
    assert [r["outcome"] for r in ledger.projection.schedule_runs("web", "nightly")] == [
        "taken",
        "skipped",
        "failed",
    ]
    assert ledger.projection.schedule_runs("web", limit=1)[0]["slots"] == 3
    (snap,) = ledger.projection.snapshots("web")
    assert snap["schedule"] == "nightly"


def test_clearing_a_schedule_removes_it_and_keeps_its_run_history(ledger: Ledger) -> None:
    with_vm(ledger)
    append(ledger, scheduled("a"), scheduled("b"))
    append(ledger, events.ScheduledRun(5_000, "web", "a", 4_000, "skipped", None, "x", 1))
    append(ledger, events.ScheduleCleared(6_000, "web", "a"))

    assert [r["name"] for r in ledger.projection.schedules()] == ["b"]
    assert len(ledger.projection.schedule_runs("web", "a")) == 1


def test_vm_retention_policy_is_set_replaced_and_cleared(ledger: Ledger) -> None:
    with_vm(ledger)
    assert ledger.projection.retention_policy("web") is None
    append(ledger, events.RetentionPolicySet(2_000, "web", RULES))
    assert ledger.projection.retention_policy("web") == events.as_dict(RULES)
    append(ledger, events.RetentionPolicyCleared(3_000, "web"))
    assert ledger.projection.retention_policy("web") is None


def test_protection_is_folded_onto_the_snapshot_and_can_be_lifted(ledger: Ledger) -> None:
    with_vm(ledger)
    requested = events.SnapshotRequested(4_000, SNAP, "web", ("root",), None)
    append(ledger, requested, fact=Fact(bytes.fromhex(SNAP), SnapshotStatus.PENDING))
    assert ledger.projection.snapshots("web")[0]["protected"] is False
    append(ledger, events.SnapshotProtected(5_000, SNAP, "web", True))
    assert ledger.projection.snapshots("web")[0]["protected"] is True
    append(ledger, events.SnapshotProtected(6_000, SNAP, "web", False))
    assert ledger.projection.snapshots("web")[0]["protected"] is False


def test_projection_of_another_schema_is_emptied_for_a_replay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as db:
        db.execute(text("CREATE TABLE snapshots (id VARCHAR(64) PRIMARY KEY, vm VARCHAR(64))"))
        db.execute(text("INSERT INTO snapshots VALUES ('x', 'web')"))
        db.execute(text("CREATE TABLE projection_meta (id INTEGER PRIMARY KEY, schema INTEGER)"))
        db.execute(text("INSERT INTO projection_meta VALUES (1, 1)"))
    engine.dispose()

    projection = Projection(url)
    try:
        assert projection.checkpoint() == (0, 0)
        assert projection.snapshots() == []
    finally:
        projection.close()
