"""The projection: SQL tables folded from events, checkpointed in the same transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    create_engine,
    delete,
    select,
)
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ledger import events, schedule_folds
from ledger.contract import LedgerRecord
from ledger.errors import LedgerCorrupted, LedgerError
from ledger.tables import (
    SCHEMA,
    TABLES,
    Base,
    CheckpointRow,
    DiskRow,
    EventRow,
    MetaRow,
    RollbackRow,
    SnapshotDiskRow,
    SnapshotRow,
    StreamRow,
    VmRow,
    columns,
)


class Projection:
    """Query tables built by folding ledger events, in SQLite or PostgreSQL by URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._engine: Engine = create_engine(url)
            if self._engine.dialect.name == "sqlite":
                sa_event.listen(self._engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(self._engine)
            self._check_schema()
        except SQLAlchemyError as err:
            raise LedgerError(
                f"cannot open the projection database {url}: {_first_line(err)}"
            ) from err

    def _check_schema(self) -> None:
        """Rebuild the tables (replayed from the chain later) when written by another schema."""
        with Session(self._engine) as session:
            meta = session.get(MetaRow, 1)
            current = meta.schema if meta else None
        if current == SCHEMA:
            return
        if current is not None or self.checkpoint()[0] > 0:
            Base.metadata.drop_all(self._engine)
            Base.metadata.create_all(self._engine)
        with Session(self._engine) as session, session.begin():
            session.merge(MetaRow(id=1, schema=SCHEMA))

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def checkpoint(self) -> tuple[int, int]:
        """Return (last applied sequence number, its block number); (0, 0) when empty."""
        with Session(self._engine) as session:
            row = session.get(CheckpointRow, 1)
            return (row.seq, row.block_number) if row else (0, 0)

    def apply(self, records: Sequence[LedgerRecord]) -> int:
        """Fold `records` in one transaction with the checkpoint; skip those already applied."""
        try:
            with Session(self._engine) as session, session.begin():
                return _apply_in(session, records)
        except SQLAlchemyError as err:
            raise LedgerError(f"projection database error: {_first_line(err)}") from err

    def reset(self) -> None:
        """Drop every row (before a replay)."""
        with Session(self._engine) as session, session.begin():
            for table in reversed(TABLES):
                session.execute(delete(table))

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted: two projections are equal when their dumps are."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with Session(self._engine) as session:
            for table in TABLES:
                cols = [c.key for c in table.__table__.columns]
                rows = session.execute(select(table)).scalars()
                out[table.__tablename__] = sorted(
                    tuple(_comparable(getattr(r, c)) for c in cols) for r in rows
                )
        return out

    def stream_version(self, stream: str) -> int:
        """The number of events on `stream` seen so far."""
        with Session(self._engine) as session:
            row = session.get(StreamRow, stream)
            return row.version if row else 0

    def vms(self) -> list[dict[str, Any]]:
        """Every registered VM with its disks, by name."""
        with Session(self._engine) as session:
            rows = session.execute(select(VmRow).order_by(VmRow.name)).scalars().all()
            return [_vm_dict(session, row) for row in rows]

    def vm(self, name: str) -> dict[str, Any] | None:
        """One VM with its disks, or None."""
        with Session(self._engine) as session:
            row = session.get(VmRow, name)
            return _vm_dict(session, row) if row else None

    def snapshots(self, vm: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Snapshots oldest first, optionally of one VM or in one status."""
        with Session(self._engine) as session:
            query = select(SnapshotRow).order_by(SnapshotRow.requested_seq)
            if vm is not None:
                query = query.where(SnapshotRow.vm == vm)
            if status is not None:
                query = query.where(SnapshotRow.status == status)
            return [_snapshot_dict(session, row) for row in session.execute(query).scalars()]

    def latest_snapshot(self, vm: str, status: str) -> dict[str, Any] | None:
        """The VM's newest snapshot in `status`, or None."""
        with Session(self._engine) as session:
            query = (
                select(SnapshotRow)
                .where(SnapshotRow.vm == vm, SnapshotRow.status == status)
                .order_by(SnapshotRow.requested_seq.desc())
                .limit(1)
            )
            row = session.execute(query).scalars().first()
            return _snapshot_dict(session, row) if row else None

    def rollbacks(self, vm: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Rollbacks oldest first, optionally of one VM or in one status."""
        with Session(self._engine) as session:
            query = select(RollbackRow).order_by(RollbackRow.started_at_ms)
            if vm is not None:
                query = query.where(RollbackRow.vm == vm)
            if status is not None:
                query = query.where(RollbackRow.status == status)
            return [columns(row) for row in session.execute(query).scalars()]

    def schedules(self, vm: str | None = None) -> list[dict[str, Any]]:
        """Schedules by VM and name, optionally of one VM."""
        with Session(self._engine) as session:
            return schedule_folds.schedules(session, vm)

    def schedule_runs(
        self, vm: str | None = None, name: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Schedule runs oldest first (the last `limit`), optionally of one VM and schedule."""
        with Session(self._engine) as session:
            return schedule_folds.schedule_runs(session, vm, name, limit)

    def retention_policy(self, vm: str) -> dict[str, Any] | None:
        """The VM's own retention rules, or None."""
        with Session(self._engine) as session:
            return schedule_folds.retention_policy(session, vm)

    def find_snapshots(self, prefix: str) -> list[dict[str, Any]]:
        """Snapshots whose id starts with `prefix`."""
        with Session(self._engine) as session:
            query = select(SnapshotRow).where(SnapshotRow.id.startswith(prefix, autoescape=True))
            return [_snapshot_dict(session, row) for row in session.execute(query).scalars()]

    def events(self, stream: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Events in sequence order, optionally of one stream, the last `limit` of them."""
        with Session(self._engine) as session:
            query = select(EventRow).order_by(EventRow.seq.desc())
            if stream is not None:
                query = query.where(EventRow.stream == stream)
            if limit is not None:
                query = query.limit(limit)
            rows = session.execute(query).scalars().all()
            return [_event_dict(row) for row in reversed(rows)]


def _apply_in(session: Session, records: Sequence[LedgerRecord]) -> int:
    point = session.get(CheckpointRow, 1) or CheckpointRow(id=1, seq=0, head="", block_number=0)
    applied = 0
    for record in records:
        if record.seq <= point.seq:
            continue
        if record.seq != point.seq + 1:
            raise LedgerCorrupted(f"event {record.seq} follows {point.seq}: a gap in the ledger")
        _fold(session, record, record.event)
        point.seq, point.head = record.seq, _hex(record.head)
        point.block_number = record.block_number
        applied += 1
    session.merge(point)
    return applied


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # The projection is rebuilt from the chain after a crash, so WAL without
    # an fsync per commit is safe and keeps appends fast.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _fold(session: Session, record: LedgerRecord, event: events.Event) -> None:
    stream = event.stream
    if events.stream_id(stream) != record.stream_id:
        raise LedgerCorrupted(f"event {record.seq} names stream {stream} but was logged on another")
    session.add(
        EventRow(
            seq=record.seq,
            stream=stream,
            version=record.version,
            type=type(event).__name__,
            fields=events.as_dict(event),
            at_ms=event.at_ms,
            subject=_hex(record.subject),
            root=_hex(record.root),
            status=record.status,
            head=_hex(record.head),
            sender=record.sender,
            block_number=record.block_number,
            tx_hash=_hex(record.tx_hash),
        )
    )
    session.merge(StreamRow(stream=stream, version=record.version))
    fold = _FOLDS.get(type(event))
    if fold is not None:
        fold(session, record, event)


def _vm_registered(session: Session, record: LedgerRecord, event: Any) -> None:
    session.execute(delete(DiskRow).where(DiskRow.vm == event.vm))
    session.merge(
        VmRow(
            name=event.vm,
            vm_type=event.vm_type,
            ip=event.ip,
            registered_at_ms=event.at_ms,
            registered_seq=record.seq,
        )
    )
    session.flush()
    session.add_all(
        DiskRow(vm=event.vm, resource_id=d.resource_id, role=d.role, size=d.size)
        for d in event.disks
    )


def _disk_placed(session: Session, record: LedgerRecord, event: Any) -> None:
    disk = session.get(DiskRow, (event.vm, event.resource_id))
    if disk is not None:
        disk.node, disk.chunk_size = event.node, event.chunk_size


def _snapshot_requested(session: Session, record: LedgerRecord, event: Any) -> None:
    if session.get(SnapshotRow, event.snapshot) is None:
        session.add(
            SnapshotRow(
                id=event.snapshot,
                vm=event.vm,
                status="pending",
                parent=event.parent,
                disks=list(event.disks),
                requested_at_ms=event.at_ms,
                requested_seq=record.seq,
                frozen=False,
                released=False,
            )
        )


def _snapshot_update(**changes: Any) -> Callable[[Session, LedgerRecord, Any], None]:
    def fold(session: Session, record: LedgerRecord, event: Any) -> None:
        row = session.get(SnapshotRow, event.snapshot)
        if row is None:
            return
        for key, value in changes.items():
            setattr(row, key, value(record, event) if callable(value) else value)

    return fold


def _target_processed(session: Session, record: LedgerRecord, event: Any) -> None:
    if session.get(SnapshotRow, event.snapshot) is None:
        return
    session.execute(delete(SnapshotDiskRow).where(SnapshotDiskRow.snapshot == event.snapshot))
    session.add_all(
        SnapshotDiskRow(snapshot=event.snapshot, **events.as_dict(d)) for d in event.disks
    )


def _rollback_started(session: Session, record: LedgerRecord, event: Any) -> None:
    session.merge(
        RollbackRow(
            id=event.rollback,
            vm=event.vm,
            snapshot=event.snapshot,
            mode=event.mode,
            status="running",
            started_at_ms=event.at_ms,
        )
    )


def _rollback_finished(session: Session, record: LedgerRecord, event: Any) -> None:
    row = session.get(RollbackRow, event.rollback)
    if row is not None:
        row.status, row.finished_at_ms, row.phase = "finished", event.at_ms, "finished"
        row.chunks_checked, row.chunks_restored = event.chunks_checked, event.chunks_restored
        row.bytes_restored = event.bytes_restored


_FOLDS: dict[type[events.Event], Callable[[Session, LedgerRecord, Any], None]] = {
    events.VmRegistered: _vm_registered,
    events.DiskPlaced: _disk_placed,
    events.SnapshotRequested: _snapshot_requested,
    events.InitialSnapshotTaken: _snapshot_update(frozen=True),
    events.TargetProcessed: _target_processed,
    events.SnapshotCommitted: _snapshot_update(
        status="committed",
        root=lambda r, e: e.root,
        committed_at_ms=lambda r, e: e.at_ms,
        committed_seq=lambda r, e: r.seq,
    ),
    events.InitialSnapshotReleased: _snapshot_update(released=True),
    events.RollbackStarted: _rollback_started,
    events.RollbackFinished: _rollback_finished,
    events.SnapshotFailed: _snapshot_update(status="failed", reason=lambda r, e: e.reason),
    events.TargetSnapshotDeleted: _snapshot_update(status="deleted", reason=lambda r, e: e.reason),
    **schedule_folds.FOLDS,
}


def _vm_dict(session: Session, row: VmRow) -> dict[str, Any]:
    disks = session.execute(
        select(DiskRow).where(DiskRow.vm == row.name).order_by(DiskRow.resource_id)
    ).scalars()
    return {
        "name": row.name,
        "type": row.vm_type,
        "ip": row.ip,
        "registered_at_ms": row.registered_at_ms,
        "registered_seq": row.registered_seq,
        "disks": [
            {
                "role": d.role,
                "resource_id": d.resource_id,
                "size": d.size,
                "node": d.node,
                "chunk_size": d.chunk_size,
            }
            for d in disks
        ],
    }


def _snapshot_dict(session: Session, row: SnapshotRow) -> dict[str, Any]:
    disks = session.execute(
        select(SnapshotDiskRow)
        .where(SnapshotDiskRow.snapshot == row.id)
        .order_by(SnapshotDiskRow.resource_id)
    ).scalars()
    shown: dict[str, Any] = columns(row)
    shown["disk_details"] = [columns(d) for d in disks]
    return shown


def _event_dict(row: EventRow) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "stream": row.stream,
        "version": row.version,
        "type": row.type,
        "fields": row.fields,
        "at_ms": row.at_ms,
        "subject": row.subject,
        "root": row.root,
        "status": row.status,
        "head": row.head,
        "sender": row.sender,
        "block_number": row.block_number,
        "tx_hash": row.tx_hash,
    }


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _comparable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
