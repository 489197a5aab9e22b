"""The write journal of a mirror: every write a VM makes during a fast rollback, hash-chained.

A record is 80 bytes, big-endian::

    seq (u64) | chunk index (u64) | chunk id (32 bytes; 32 zero bytes: the chunk became a hole)
    | hash (32 bytes) = BLAKE3(previous hash | seq | index | chunk id)

The chain starts from ``BLAKE3("vmsnap journal" | mirror id)``. A tag is a position (how
many records) and the hash after it; the difference between two tags is the journal
between them replayed, the last write to each chunk winning, and its root is the RFC 6962
Merkle root over ``index (8 bytes) | chunk id`` in index order. A record cut short by a
crash was never acknowledged and is dropped when the journal is opened.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from ledger.merkle import merkle_root
from nodes.errors import NodeError

RECORD = struct.Struct(">QQ32s32s")
HOLE = bytes(32)


class JournalBroken(NodeError):
    """A journal's hash chain does not hold."""


@dataclass(frozen=True)
class Record:
    """One journaled write: the chunk at `index` is now `chunk` (None: a hole)."""

    seq: int
    index: int
    chunk: bytes | None
    hash: bytes

    def pack(self) -> bytes:
        """The record's 80 bytes."""
        return RECORD.pack(self.seq, self.index, self.chunk or HOLE, self.hash)

    @classmethod
    def unpack(cls, raw: bytes) -> Record:
        """A record from its 80 bytes."""
        seq, index, chunk, digest = RECORD.unpack(raw)
        return cls(seq, index, None if chunk == HOLE else chunk, digest)


def genesis(mirror: str) -> bytes:
    """The hash a mirror's journal starts from."""
    return blake3.blake3(b"vmsnap journal" + bytes.fromhex(mirror)).digest()


def link(previous: bytes, seq: int, index: int, chunk: bytes | None) -> bytes:
    """The hash of a record that follows `previous`."""
    body = previous + seq.to_bytes(8, "big") + index.to_bytes(8, "big") + (chunk or HOLE)
    return blake3.blake3(body).digest()


def verify(mirror: str, records: Sequence[Record]) -> bytes:
    """Check that `records` are the journal from its start; return the head hash."""
    head = genesis(mirror)
    for expected, record in enumerate(records, start=1):
        if record.seq != expected or record.hash != link(
            head, record.seq, record.index, record.chunk
        ):
            raise JournalBroken(f"journal of mirror {mirror[:12]} breaks at record {expected}")
        head = record.hash
    return head


def difference(records: Iterable[Record], start: int, end: int) -> dict[int, bytes | None]:
    """Replay records with start < seq <= end: each chunk's last write."""
    changed: dict[int, bytes | None] = {}
    for record in records:
        if start < record.seq <= end:
            changed[record.index] = record.chunk
    return changed


def difference_root(changed: dict[int, bytes | None]) -> bytes:
    """The Merkle root of a difference (32 zero bytes when nothing changed)."""
    leaves = [i.to_bytes(8, "big") + (changed[i] or HOLE) for i in sorted(changed)]
    return merkle_root(leaves) if leaves else bytes(32)


class Journal:
    """An append-only journal file; `append` returns once the records are on disk."""

    def __init__(self, path: Path, mirror: str) -> None:
        self.path = path
        self.mirror = mirror
        self.records: list[Record] = []
        raw = path.read_bytes() if path.exists() else b""
        whole = len(raw) - len(raw) % RECORD.size
        self.records = [
            Record.unpack(raw[i : i + RECORD.size]) for i in range(0, whole, RECORD.size)
        ]
        self.head = verify(mirror, self.records)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if whole != len(raw):
            os.ftruncate(self._fd, whole)
            os.fsync(self._fd)

    @property
    def position(self) -> int:
        """How many records the journal holds."""
        return len(self.records)

    def append(self, writes: Sequence[tuple[int, bytes | None]]) -> list[Record]:
        """Chain, write and fsync one record per (index, chunk id)."""
        added: list[Record] = []
        head = self.head
        for index, chunk in writes:
            seq = self.position + len(added) + 1
            head = link(head, seq, index, chunk)
            added.append(Record(seq, index, chunk, head))
        self.extend(added)
        return added

    def extend(self, records: Sequence[Record]) -> None:
        """Append records made elsewhere (a replica's copy), checking they follow the head."""
        head = self.head
        for offset, record in enumerate(records, start=self.position + 1):
            if record.seq != offset or record.hash != link(
                head, record.seq, record.index, record.chunk
            ):
                raise JournalBroken(f"record {record.seq} does not follow the journal's head")
            head = record.hash
        if not records:
            return
        os.pwrite(self._fd, b"".join(r.pack() for r in records), self.position * RECORD.size)
        os.fsync(self._fd)
        self.records.extend(records)
        self.head = head

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)
