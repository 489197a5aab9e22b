"""A chunk store's upkeep: recovery on open, quarantine, compaction and scrub.

`StoreUpkeep` is the base of `nodes.chunk_store.ChunkStore`. It keeps index and pack files
in agreement after a crash or a damaged pack tail, sets bad copies aside in the quarantine,
rewrites packs that are mostly garbage, and re-hashes every record on demand. It works on
the index connection and pack files the store opens, under the store's lock and error
guard, and writes through the store's transactions and append path (the abstract methods
below).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from nodes.errors import ChunkCorrupted
from nodes.packs import PACK_MAGIC, RECORD, PackFiles, Place, Record

log = logging.getLogger("vmsnap.chunks")

BATCH = 500
"""Chunks per index query, and per step a long call takes under the store's lock."""


@dataclass(frozen=True)
class ScrubReport:
    """One scrub pass: how much was re-hashed and which copies were bad (now quarantined)."""

    checked: int
    checked_bytes: int
    corrupted: tuple[bytes, ...]


@dataclass(frozen=True)
class Recovery:
    """What opening the store repaired after a crash or a damaged pack tail."""

    dropped: int = 0
    reindexed: int = 0
    truncated_bytes: int = 0


class StoreUpkeep(ABC):
    """Recovery, quarantine, compaction and scrub over a chunk store's index and packs.

    The index's `packs` table keeps per pack its committed size, live bytes and chunks, and
    a `retired` mark: compaction copies a pack's live records to the open pack, commits
    their new places with the old pack marked retired, and only then deletes the old pack,
    so recovery deletes any retired pack a crash left behind.
    """

    _lock: threading.RLock
    _db: sqlite3.Connection
    _packs: PackFiles
    _quarantine_dir: Path

    @abstractmethod
    def _guard(self) -> AbstractContextManager[None]:
        """Translate the index's and the file system's errors into ChunkStoreError."""

    @abstractmethod
    def _begin(self) -> None:
        """Open a write transaction on the index unless one is open."""

    @abstractmethod
    def _sync(self) -> None:
        """Fsync the open pack, then commit the index."""

    @abstractmethod
    def _account(self, pack: int, length: int, count: int) -> None:
        """Add (count = 1) or remove (count = -1) one record from a pack's live totals."""

    @abstractmethod
    def _append(self, records: list[Record]) -> None:
        """Write records to the open pack and index them."""

    # -- maintenance -------------------------------------------------------------------

    def compact(self, min_garbage_ratio: float = 0.25) -> int:
        """Rewrite the live records of sealed packs at least this dead; bytes reclaimed."""
        with self._lock, self._guard():
            rows = self._db.execute(
                "SELECT pack, size, live_bytes FROM packs WHERE retired = 0 ORDER BY pack"
            ).fetchall()
        reclaimed = 0
        for pack, size, live in rows:
            garbage = size - len(PACK_MAGIC) - live
            if garbage > 0 and garbage >= min_garbage_ratio * size:
                with self._lock, self._guard():
                    reclaimed += self._compact_pack(pack)
        return reclaimed

    def scrub(self, progress: Callable[[int, int], None] | None = None) -> ScrubReport:
        """Re-read and re-hash every blob; bad copies are quarantined and listed."""
        with self._lock, self._guard():
            query = "SELECT COALESCE(SUM(live_chunks), 0) FROM packs"
            (total,) = self._db.execute(query).fetchone()
        checked = checked_bytes = 0
        corrupted: list[bytes] = []
        after = (-1, -1)
        while True:
            with self._lock, self._guard():
                rows = self._db.execute(
                    "SELECT id, pack, offset, length, checksum FROM chunks"
                    " WHERE (pack, offset) > (?, ?) ORDER BY pack, offset LIMIT ?",
                    (*after, BATCH),
                ).fetchall()
                for row in rows:
                    place = Place(*row)
                    try:
                        self._packs.read(place)
                    except ChunkCorrupted as err:
                        self._quarantine(place, err.reason)
                        corrupted.append(place.chunk_id)
                    checked_bytes += place.length
                self._sync()
            if not rows:
                break
            checked += len(rows)
            after = (rows[-1][1], rows[-1][2])
            if progress is not None:
                progress(min(checked, total), max(total, checked))
        return ScrubReport(checked, checked_bytes, tuple(corrupted))

    # -- compaction and quarantine -----------------------------------------------------

    def _compact_pack(self, pack: int) -> int:
        """Move the live records of `pack` to the open pack, delete it; net bytes freed."""
        self._sync()
        self._packs.stop_appending_to(pack)
        before = self._pack_bytes()
        after = -1
        while rows := self._db.execute(
            "SELECT id, pack, offset, length, checksum FROM chunks"
            " WHERE pack = ? AND offset > ? ORDER BY offset LIMIT ?",
            (pack, after, BATCH),
        ).fetchall():
            for row in rows:
                place = Place(*row)
                after = place.offset
                try:
                    blob = self._packs.read(place)
                except ChunkCorrupted as err:
                    self._quarantine(place, err.reason)
                    continue
                self._begin()
                self._db.execute("DELETE FROM chunks WHERE id = ?", (place.chunk_id,))
                self._account(pack, place.length, -1)
                self._append([(place.chunk_id, blob, place.checksum)])
        self._db.execute("UPDATE packs SET retired = 1 WHERE pack = ?", (pack,))
        self._sync()
        self._drop_pack(pack, missing_ok=True)
        reclaimed = before - self._pack_bytes()
        log.info("compacted pack %d: %d bytes reclaimed", pack, reclaimed)
        return reclaimed

    def _pack_bytes(self) -> int:
        query = "SELECT COALESCE(SUM(size), 0) FROM packs WHERE retired = 0"
        total: int = self._db.execute(query).fetchone()[0]
        return total

    def _drop_pack(self, pack: int, *, missing_ok: bool = False) -> None:
        """Delete a pack's file, then its index row."""
        self._packs.remove(pack, missing_ok=missing_ok)
        self._db.execute("DELETE FROM packs WHERE pack = ?", (pack,))

    def _quarantine(self, place: Place, reason: str) -> None:
        """Keep the bad copy's bytes aside and drop it from the index."""
        try:
            raw = self._packs.record_bytes(place)
        except OSError:
            raw = b""
        name = f"{place.chunk_id.hex()}-{place.pack:08d}-{place.offset}.bad"
        (self._quarantine_dir / name).write_bytes(raw)
        self._begin()
        self._db.execute(
            "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
            (place.chunk_id, place.pack, place.offset, place.length, reason, time.time(), name),
        )
        self._db.execute("DELETE FROM chunks WHERE id = ?", (place.chunk_id,))
        self._account(place.pack, place.length, -1)
        log.warning("chunk %s quarantined: %s", place.chunk_id.hex(), reason)

    # -- recovery on open --------------------------------------------------------------

    def _recover(self) -> Recovery:
        """Bring index and packs into agreement after a crash.

        Retired packs are deleted, the rows of packs missing from disk dropped, and each
        pack on disk reconciled with its rows (see `_reconcile`).
        """
        dropped = reindexed = truncated = 0
        self._begin()
        for (pack,) in self._db.execute("SELECT pack FROM packs WHERE retired = 1").fetchall():
            self._drop_pack(pack, missing_ok=True)
        on_disk = set(self._packs.numbers())
        for (pack,) in self._db.execute("SELECT pack FROM packs").fetchall():
            if pack not in on_disk:
                dropped += self._db.execute("DELETE FROM chunks WHERE pack = ?", (pack,)).rowcount
                self._db.execute("DELETE FROM packs WHERE pack = ?", (pack,))
                log.warning("pack %d is missing: its chunks are dropped from the index", pack)
        for pack in sorted(on_disk):
            lost, found, cut = self._reconcile(pack)
            dropped, reindexed, truncated = dropped + lost, reindexed + found, truncated + cut
        self._sync()
        return Recovery(dropped, reindexed, truncated)

    def _reconcile(self, pack: int) -> tuple[int, int, int]:
        """Make one pack file and its index rows agree; (dropped, reindexed, cut bytes).

        Records past the pack's committed size that are whole and verify are indexed, the
        first bad one and everything after it is cut off, and rows pointing past the pack's
        end are dropped.
        """
        row = self._db.execute("SELECT size FROM packs WHERE pack = ?", (pack,)).fetchone()
        committed = row[0] if row else 0
        actual, marked = self._packs.inspect(pack)
        dropped = reindexed = 0
        if actual < len(PACK_MAGIC) or (committed == 0 and not marked):
            dropped = self._db.execute("DELETE FROM chunks WHERE pack = ?", (pack,)).rowcount
            end = 0
        elif actual < committed:
            dropped = self._db.execute(
                "DELETE FROM chunks WHERE pack = ? AND offset + ? + length > ?",
                (pack, RECORD.size, actual),
            ).rowcount
            end = self._db.execute(
                "SELECT COALESCE(MAX(offset + ? + length), ?) FROM chunks WHERE pack = ?",
                (RECORD.size, len(PACK_MAGIC), pack),
            ).fetchone()[0]
        else:
            end, reindexed = self._scan_tail(pack, max(committed, len(PACK_MAGIC)), actual)
        if end == 0:
            self._drop_pack(pack)
            return dropped, reindexed, actual
        if end != actual and self._packs.is_padding(pack, end, actual):
            self._packs.truncate(pack, end)  # zeros a direct write left after the last record
            actual = end
        elif end != actual:
            self._packs.truncate(pack, end)
            log.warning("pack %d: %d bytes cut from a damaged tail", pack, actual - end)
        live, chunks = self._db.execute(
            "SELECT COALESCE(SUM(length), 0), COUNT(*) FROM chunks WHERE pack = ?", (pack,)
        ).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO packs (pack, size, live_bytes, live_chunks) VALUES (?,?,?,?)",
            (pack, end, live + chunks * RECORD.size, chunks),
        )
        return dropped, reindexed, actual - end

    def _scan_tail(self, pack: int, start: int, actual: int) -> tuple[int, int]:
        """Index the whole, valid records from `start`; (end of the last one, count)."""
        end, found = start, 0
        for place in self._packs.scan(pack, start, actual):
            found += self._db.execute(
                "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)",
                (place.chunk_id, pack, place.offset, place.length, place.checksum),
            ).rowcount
            end = place.offset + RECORD.size + place.length
        return end, found
