"""Ledger events: one frozen dataclass per fact, with a schema version and canonical CBOR.

An event's payload on chain is ``canonical CBOR {"type": NAME, "v": VERSION,
"fields": {...}}``; nested value objects become maps and tuples become
arrays. Events carry ids, sizes, hashes and times, never chunk data.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, get_type_hints

import cbor2
from eth_hash.auto import keccak

from ledger.errors import LedgerCorrupted

DEPLOYMENT_STREAM = "deployment"


def vm_stream(vm: str) -> str:
    """Return the name of the stream that holds a VM's history."""
    return f"vm/{vm}"


def stream_id(stream: str) -> bytes:
    """Return the 32-byte id the contract keys a stream by."""
    return keccak(stream.encode())


@dataclass(frozen=True)
class Event:
    """Base of all events: a past-tense fact that happened at ``at_ms`` (Unix ms)."""

    SCHEMA: ClassVar[int] = 1
    at_ms: int

    @property
    def stream(self) -> str:
        """The stream the event belongs to."""
        raise NotImplementedError


class OnVmStream:
    """Mixin of events that belong to a VM: they live on the VM's stream."""

    vm: str

    @property
    def stream(self) -> str:
        """The stream of the event's VM."""
        return vm_stream(self.vm)


@dataclass(frozen=True)
class Disk:
    """A VM disk: its role (system or data), resource id and size in bytes."""

    role: str
    resource_id: str
    size: int


@dataclass(frozen=True)
class LedgerOpened(Event):
    """The ledger contract of a deployment was deployed and opened for appends."""

    deployment: str
    contract: str
    chain_id: int

    @property
    def stream(self) -> str:
        """Deployment-wide facts live on one stream."""
        return DEPLOYMENT_STREAM


@dataclass(frozen=True)
class VmRegistered(OnVmStream, Event):
    """A VM was registered: its type, host name, LAN address and disks."""

    vm: str
    vm_type: str
    ip: str
    disks: tuple[Disk, ...]


@dataclass(frozen=True)
class DiskPlaced(OnVmStream, Event):
    """A VM disk became a volume on a business node, with its chunk size."""

    vm: str
    resource_id: str
    node: str
    chunk_size: int


@dataclass(frozen=True)
class SnapshotRequested(OnVmStream, Event):
    """A snapshot of some of a VM's disks was asked for (its parent: the VM's last one)."""

    snapshot: str
    vm: str
    disks: tuple[str, ...]
    parent: str | None


@dataclass(frozen=True)
class InitialSnapshotTaken(OnVmStream, Event):
    """Every disk was frozen on its business node (the seed's initial snapshot)."""

    snapshot: str
    vm: str
    generations: tuple[int, ...]


@dataclass(frozen=True)
class SnapshotDisk:
    """One disk of a committed snapshot: its manifest, root and what processing it cost."""

    resource_id: str
    manifest: str
    root: str
    size: int
    chunk_size: int
    chunks: int
    changed_chunks: int
    new_chunks: int
    bytes_read: int
    bytes_stored: int
    incremental: bool


@dataclass(frozen=True)
class TargetProcessed(OnVmStream, Event):
    """The transfer node turned the initial snapshot into chunks and manifests on R nodes."""

    snapshot: str
    vm: str
    node: str
    disks: tuple[SnapshotDisk, ...]


@dataclass(frozen=True)
class SnapshotCommitted(OnVmStream, Event):
    """The snapshot's Merkle root is on chain: the target snapshot is complete."""

    snapshot: str
    vm: str
    root: str


@dataclass(frozen=True)
class InitialSnapshotReleased(OnVmStream, Event):
    """The business node released the frozen views; dirty tracking counts from them."""

    snapshot: str
    vm: str


@dataclass(frozen=True)
class SnapshotFailed(OnVmStream, Event):
    """A snapshot was abandoned and undone; its reason says why."""

    snapshot: str
    vm: str
    reason: str


@dataclass(frozen=True)
class InitialSnapshotDeleted(OnVmStream, Event):
    """Delete, step 1: the initial snapshot is gone from business storage."""

    snapshot: str
    vm: str
    views_released: int


@dataclass(frozen=True)
class TargetStagingDeleted(OnVmStream, Event):
    """Delete, step 2: the transfer node holds nothing of the snapshot any more."""

    snapshot: str
    vm: str
    node: str


@dataclass(frozen=True)
class TargetSnapshotDeleted(OnVmStream, Event):
    """Delete, step 3: the target snapshot left the backup cluster (its manifests unreferenced)."""

    snapshot: str
    vm: str
    reason: str


@dataclass(frozen=True)
class GarbageCollected(Event):
    """Chunks no live manifest referenced were removed from the backup nodes."""

    chunks: int
    copies: int
    bytes_reclaimed: int

    @property
    def stream(self) -> str:
        """Deployment-wide facts live on one stream."""
        return DEPLOYMENT_STREAM


@dataclass(frozen=True)
class RollbackStarted(OnVmStream, Event):
    """A rollback of a VM to one of its snapshots began (the VM is being stopped)."""

    rollback: str
    vm: str
    snapshot: str
    mode: str


@dataclass(frozen=True)
class RollbackFinished(OnVmStream, Event):
    """The VM's disks equal the snapshot again and the VM was restarted."""

    rollback: str
    vm: str
    snapshot: str
    chunks_checked: int
    chunks_restored: int
    bytes_restored: int
    seconds: float


@dataclass(frozen=True)
class RetentionRules:
    """Keep-* rules as recorded: counts (None when a rule is off), a span, a time zone."""

    keep_last: int | None
    keep_hourly: int | None
    keep_daily: int | None
    keep_weekly: int | None
    keep_monthly: int | None
    keep_yearly: int | None
    keep_within: str | None
    tz: str


@dataclass(frozen=True)
class ScheduleSet(OnVmStream, Event):
    """A periodic snapshot schedule of a VM was created or replaced (with its retention)."""

    vm: str
    name: str
    schedule: str
    tz: str
    anchor: str | None
    retention: RetentionRules


@dataclass(frozen=True)
class ScheduleCleared(OnVmStream, Event):
    """A VM's schedule was removed; its snapshots stay."""

    vm: str
    name: str


@dataclass(frozen=True)
class ScheduledRun(OnVmStream, Event):
    """A schedule's run: taken, skipped or failed; `slots` it stands for (0: run by hand)."""

    vm: str
    name: str
    slot_ms: int
    outcome: str
    snapshot: str | None
    detail: str
    slots: int


@dataclass(frozen=True)
class RetentionPolicySet(OnVmStream, Event):
    """The VM's own retention rules, for snapshots no schedule's rules govern."""

    vm: str
    retention: RetentionRules


@dataclass(frozen=True)
class RetentionPolicyCleared(OnVmStream, Event):
    """The VM's own retention rules were removed: its unscheduled snapshots are all kept."""

    vm: str


@dataclass(frozen=True)
class RetentionDecision:
    """Whether one snapshot stays under a policy, and the rules that keep it (or why not)."""

    snapshot: str
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RetentionApplied(OnVmStream, Event):
    """Retention decided over a group of a VM's snapshots (one part when the list is long)."""

    vm: str
    group: str
    rules: RetentionRules
    decisions: tuple[RetentionDecision, ...]
    part: int
    parts: int


@dataclass(frozen=True)
class SnapshotProtected(OnVmStream, Event):
    """A snapshot was protected from retention and deletion, or released from protection."""

    snapshot: str
    vm: str
    protected: bool


@dataclass(frozen=True)
class MirrorTag:
    """A tag on one disk's mirror journal: where it stood (records) and its hash there."""

    resource_id: str
    node: str
    mirror: str
    position: int
    head: str


@dataclass(frozen=True)
class RollbackStartTagged(OnVmStream, Event):
    """Fast rollback: the mirrors exist; the start tags of their journals."""

    rollback: str
    vm: str
    tags: tuple[MirrorTag, ...]
    auto: bool


@dataclass(frozen=True)
class RollbackRestored(OnVmStream, Event):
    """Fast rollback: the snapshot's chunks are back in the business volumes."""

    rollback: str
    vm: str
    chunks_checked: int
    chunks_restored: int
    bytes_restored: int


@dataclass(frozen=True)
class RollbackEndTagged(OnVmStream, Event):
    """Fast rollback: the end tags, and the root of the difference replayed between the tags."""

    rollback: str
    vm: str
    tags: tuple[MirrorTag, ...]
    difference_root: str
    changed_chunks: int


@dataclass(frozen=True)
class RollbackAbandoned(OnVmStream, Event):
    """A fast rollback was undone before the VM ran on its mirrors."""

    rollback: str
    vm: str
    reason: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        LedgerOpened,
        VmRegistered,
        DiskPlaced,
        SnapshotRequested,
        InitialSnapshotTaken,
        TargetProcessed,
        SnapshotCommitted,
        InitialSnapshotReleased,
        SnapshotFailed,
        InitialSnapshotDeleted,
        TargetStagingDeleted,
        TargetSnapshotDeleted,
        GarbageCollected,
        RollbackStarted,
        RollbackFinished,
        ScheduleSet,
        ScheduleCleared,
        ScheduledRun,
        RetentionPolicySet,
        RetentionPolicyCleared,
        RetentionApplied,
        SnapshotProtected,
        RollbackStartTagged,
        RollbackRestored,
        RollbackEndTagged,
        RollbackAbandoned,
    )
}

E = TypeVar("E")


def encode(event: Event) -> bytes:
    """Return the canonical CBOR payload of `event`."""
    body = {"type": type(event).__name__, "v": event.SCHEMA, "fields": _plain(event)}
    return cbor2.dumps(body, canonical=True)


def decode(payload: bytes) -> Event:
    """Rebuild an event from its payload; refuse anything that is not one."""
    try:
        body = cbor2.loads(payload)
        cls = EVENT_TYPES[body["type"]]
        if type(body["v"]) is not int or body["v"] != cls.SCHEMA:
            raise LedgerCorrupted(f"{body['type']} schema {body['v']} is not supported")
        return _build(cls, body["fields"])
    except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as err:
        raise LedgerCorrupted(f"undecodable event payload: {err}") from err


def as_dict(event: Event | RetentionRules | MirrorTag) -> dict[str, Any]:
    """Return an event's (or a value's) fields as plain data (for JSON and the projection)."""
    plain = _plain(event)
    assert isinstance(plain, dict)
    return plain


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _build(cls: type[E], fields: dict[str, Any]) -> E:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if set(fields) != names:
        raise ValueError(f"{cls.__name__} fields {sorted(fields)} != {sorted(names)}")
    return cls(**{name: _coerce(hints[name], fields[name]) for name in names})


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {type(value).__name__}")
        (item, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(item, v) for v in value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TypeError(f"expected a map, got {type(value).__name__}")
        return _build(hint, value)
    if origin in (typing.Union, types.UnionType):
        return value
    if isinstance(hint, type) and (
        not isinstance(value, hint) or (isinstance(value, bool) and hint is not bool)
    ):
        raise TypeError(f"expected {hint.__name__}, got {type(value).__name__}")
    return value
