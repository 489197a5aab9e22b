"""The projection's tables: SQLAlchemy models of everything folded from the ledger."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the projection tables."""


class EventRow(Base):
    """Every ledger event, in sequence order."""

    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    stream: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    subject: Mapped[str] = mapped_column(String(66))
    root: Mapped[str] = mapped_column(String(66))
    status: Mapped[int] = mapped_column(Integer)
    head: Mapped[str] = mapped_column(String(66))
    sender: Mapped[str] = mapped_column(String(42))
    block_number: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))


class StreamRow(Base):
    """The version of every stream (the count of its events)."""

    __tablename__ = "streams"
    stream: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class VmRow(Base):
    """A registered VM."""

    __tablename__ = "vms"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_type: Mapped[str] = mapped_column(String(32))
    ip: Mapped[str] = mapped_column(String(64))
    registered_at_ms: Mapped[int] = mapped_column(BigInteger)
    registered_seq: Mapped[int] = mapped_column(BigInteger)


class DiskRow(Base):
    """A VM's disk."""

    __tablename__ = "disks"
    vm: Mapped[str] = mapped_column(ForeignKey("vms.name"), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    node: Mapped[str | None] = mapped_column(String(64), default=None)
    chunk_size: Mapped[int | None] = mapped_column(Integer, default=None)


class CheckpointRow(Base):
    """The last applied event: its sequence number, chain head and block."""

    __tablename__ = "checkpoint"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[str] = mapped_column(String(66))
    block_number: Mapped[int] = mapped_column(BigInteger)


class SnapshotRow(Base):
    """A snapshot of a VM and where its workflow stands."""

    __tablename__ = "snapshots"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    parent: Mapped[str | None] = mapped_column(String(64), default=None)
    disks: Mapped[list[str]] = mapped_column(JSON)
    root: Mapped[str | None] = mapped_column(String(66), default=None)
    requested_at_ms: Mapped[int] = mapped_column(BigInteger)
    requested_seq: Mapped[int] = mapped_column(BigInteger)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    committed_at_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    committed_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    released: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    schedule: Mapped[str | None] = mapped_column(String(64), default=None)
    protected: Mapped[bool] = mapped_column(Boolean, default=False)


class SnapshotDiskRow(Base):
    """One disk of a snapshot: manifest, root and processing figures."""

    __tablename__ = "snapshot_disks"
    snapshot: Mapped[str] = mapped_column(ForeignKey("snapshots.id"), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    manifest: Mapped[str] = mapped_column(String(64))
    root: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(BigInteger)
    changed_chunks: Mapped[int] = mapped_column(BigInteger)
    new_chunks: Mapped[int] = mapped_column(BigInteger)
    bytes_read: Mapped[int] = mapped_column(BigInteger)
    bytes_stored: Mapped[int] = mapped_column(BigInteger)
    incremental: Mapped[bool] = mapped_column(Boolean)


class RollbackRow(Base):
    """A rollback of a VM to a snapshot."""

    __tablename__ = "rollbacks"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm: Mapped[str] = mapped_column(String(64), index=True)
    snapshot: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    started_at_ms: Mapped[int] = mapped_column(BigInteger)
    finished_at_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    chunks_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_restored: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_restored: Mapped[int] = mapped_column(BigInteger, default=0)
    phase: Mapped[str] = mapped_column(String(16), default="started")
    auto: Mapped[bool] = mapped_column(Boolean, default=False)
    start_tags: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    end_tags: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    difference_root: Mapped[str | None] = mapped_column(String(64), default=None)
    changed_chunks: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)


class ScheduleRow(Base):
    """A VM's periodic snapshot schedule, its retention rules and how its runs went."""

    __tablename__ = "schedules"
    vm: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    schedule: Mapped[str] = mapped_column(String(200))
    tz: Mapped[str] = mapped_column(String(64))
    anchor: Mapped[str | None] = mapped_column(String(40), default=None)
    retention: Mapped[dict[str, Any]] = mapped_column(JSON)
    set_at_ms: Mapped[int] = mapped_column(BigInteger)
    set_seq: Mapped[int] = mapped_column(BigInteger)
    last_slot_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    last_snapshot: Mapped[str | None] = mapped_column(String(64), default=None)
    taken: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)


class ScheduleRunRow(Base):
    """One run of a schedule: its slot and whether it was taken, skipped or failed."""

    __tablename__ = "schedule_runs"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    vm: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    slot_ms: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    snapshot: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[str] = mapped_column(Text)
    slots: Mapped[int] = mapped_column(Integer)
    at_ms: Mapped[int] = mapped_column(BigInteger)


class RetentionPolicyRow(Base):
    """A VM's own retention rules (for the snapshots no schedule's rules govern)."""

    __tablename__ = "retention_policies"
    vm: Mapped[str] = mapped_column(String(64), primary_key=True)
    retention: Mapped[dict[str, Any]] = mapped_column(JSON)
    set_at_ms: Mapped[int] = mapped_column(BigInteger)


class MetaRow(Base):
    """The projection's schema version: a projection of another version is rebuilt."""

    __tablename__ = "projection_meta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schema: Mapped[int] = mapped_column(Integer)


SCHEMA = 3
TABLES: tuple[type[Base], ...] = (
    EventRow,
    StreamRow,
    VmRow,
    DiskRow,
    CheckpointRow,
    SnapshotRow,
    SnapshotDiskRow,
    RollbackRow,
    ScheduleRow,
    ScheduleRunRow,
    RetentionPolicyRow,
)


def columns(row: Any) -> dict[str, Any]:
    """A row as a dict of its columns."""
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}
