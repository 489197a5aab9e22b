"""Folds and queries of schedules, runs, retention policies, protection and fast rollbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ledger import events
from ledger.contract import LedgerRecord
from ledger.tables import (
    RetentionPolicyRow,
    RollbackRow,
    ScheduleRow,
    ScheduleRunRow,
    SnapshotRow,
    columns,
)

_COUNTERS = {"taken": "taken", "skipped": "skipped", "failed": "failed"}


def _schedule_set(session: Session, record: LedgerRecord, event: Any) -> None:
    row = session.get(ScheduleRow, (event.vm, event.name))
    if row is None:
        row = ScheduleRow(vm=event.vm, name=event.name, taken=0, skipped=0, failed=0)
        session.add(row)
    row.schedule, row.tz, row.anchor = event.schedule, event.tz, event.anchor
    row.retention = events.as_dict(event.retention)
    row.set_at_ms, row.set_seq = event.at_ms, record.seq


def _schedule_cleared(session: Session, record: LedgerRecord, event: Any) -> None:
    session.execute(
        delete(ScheduleRow).where(ScheduleRow.vm == event.vm, ScheduleRow.name == event.name)
    )


def _scheduled_run(session: Session, record: LedgerRecord, event: Any) -> None:
    session.add(
        ScheduleRunRow(
            seq=record.seq,
            vm=event.vm,
            name=event.name,
            slot_ms=event.slot_ms,
            outcome=event.outcome,
            snapshot=event.snapshot,
            detail=event.detail,
            slots=event.slots,
            at_ms=event.at_ms,
        )
    )
    row = session.get(ScheduleRow, (event.vm, event.name))
    if row is not None:
        row.last_slot_ms = max(row.last_slot_ms or 0, event.slot_ms)
        row.last_outcome, row.last_snapshot = event.outcome, event.snapshot
        counter = _COUNTERS.get(event.outcome)
        if counter is not None:
            setattr(row, counter, getattr(row, counter) + 1)
    if event.outcome == "taken" and event.snapshot is not None:
        snapshot = session.get(SnapshotRow, event.snapshot)
        if snapshot is not None:
            snapshot.schedule = event.name


def _policy_set(session: Session, record: LedgerRecord, event: Any) -> None:
    session.merge(
        RetentionPolicyRow(
            vm=event.vm, retention=events.as_dict(event.retention), set_at_ms=event.at_ms
        )
    )


def _policy_cleared(session: Session, record: LedgerRecord, event: Any) -> None:
    session.execute(delete(RetentionPolicyRow).where(RetentionPolicyRow.vm == event.vm))


def _protected(session: Session, record: LedgerRecord, event: Any) -> None:
    snapshot = session.get(SnapshotRow, event.snapshot)
    if snapshot is not None:
        snapshot.protected = event.protected


def _start_tagged(session: Session, record: LedgerRecord, event: Any) -> None:
    row = session.get(RollbackRow, event.rollback)
    if row is not None:
        row.phase, row.auto = "mirrored", event.auto
        row.start_tags = [events.as_dict(t) for t in event.tags]


def _restored(session: Session, record: LedgerRecord, event: Any) -> None:
    row = session.get(RollbackRow, event.rollback)
    if row is not None:
        row.phase = "restored"
        row.chunks_checked, row.chunks_restored = event.chunks_checked, event.chunks_restored
        row.bytes_restored = event.bytes_restored


def _end_tagged(session: Session, record: LedgerRecord, event: Any) -> None:
    row = session.get(RollbackRow, event.rollback)
    if row is not None:
        row.phase, row.difference_root = "ending", event.difference_root
        row.end_tags = [events.as_dict(t) for t in event.tags]
        row.changed_chunks = event.changed_chunks


def _abandoned(session: Session, record: LedgerRecord, event: Any) -> None:
    row = session.get(RollbackRow, event.rollback)
    if row is not None:
        row.status, row.phase, row.reason = "abandoned", "abandoned", event.reason
        row.finished_at_ms = event.at_ms


FOLDS: dict[type[events.Event], Callable[[Session, LedgerRecord, Any], None]] = {
    events.RollbackStartTagged: _start_tagged,
    events.RollbackRestored: _restored,
    events.RollbackEndTagged: _end_tagged,
    events.RollbackAbandoned: _abandoned,
    events.ScheduleSet: _schedule_set,
    events.ScheduleCleared: _schedule_cleared,
    events.ScheduledRun: _scheduled_run,
    events.RetentionPolicySet: _policy_set,
    events.RetentionPolicyCleared: _policy_cleared,
    events.SnapshotProtected: _protected,
}


def schedules(session: Session, vm: str | None) -> list[dict[str, Any]]:
    """Schedules by VM and name, optionally of one VM."""
    query = select(ScheduleRow).order_by(ScheduleRow.vm, ScheduleRow.name)
    if vm is not None:
        query = query.where(ScheduleRow.vm == vm)
    return [columns(row) for row in session.execute(query).scalars()]


def schedule_runs(
    session: Session, vm: str | None, name: str | None, limit: int | None
) -> list[dict[str, Any]]:
    """Runs oldest first (the last `limit`), optionally of one VM and schedule."""
    query = select(ScheduleRunRow).order_by(ScheduleRunRow.seq.desc())
    if vm is not None:
        query = query.where(ScheduleRunRow.vm == vm)
    if name is not None:
        query = query.where(ScheduleRunRow.name == name)
    if limit is not None:
        query = query.limit(limit)
    return [columns(row) for row in reversed(session.execute(query).scalars().all())]


def retention_policy(session: Session, vm: str) -> dict[str, Any] | None:
    """The VM's own retention rules, or None."""
    row = session.get(RetentionPolicyRow, vm)
    return dict(row.retention) if row else None
