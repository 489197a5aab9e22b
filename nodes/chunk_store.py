"""The backup node's chunk store: append-only pack files plus a SQLite index.

`ChunkStore` opens the store and serves puts, gets, membership, deletes, the id listing and
the totals; recovery on open, quarantine, compaction and scrub come from its base,
`nodes.store_upkeep.StoreUpkeep`.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nodes.errors import ChunkCorrupted, ChunkMissing, ChunkStoreError
from nodes.packs import (
    DEFAULT_PACK_LIMIT,
    ID_SIZE,
    MAX_BLOB,
    PACK_MAGIC,
    RECORD,
    RECORD_MAGIC,
    PackFiles,
    Place,
    Record,
    record_checksum,
)
from nodes.store_upkeep import BATCH, Recovery, ScrubReport, StoreUpkeep

__all__ = [
    "DEFAULT_PACK_LIMIT",
    "ID_SIZE",
    "MAX_BLOB",
    "PACK_MAGIC",
    "RECORD",
    "RECORD_MAGIC",
    "ChunkStore",
    "Recovery",
    "ScrubReport",
    "StoreStats",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, checksum BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_place ON chunks (pack, offset);
CREATE TABLE IF NOT EXISTS packs (
    pack INTEGER PRIMARY KEY, size INTEGER NOT NULL, live_bytes INTEGER NOT NULL DEFAULT 0,
    live_chunks INTEGER NOT NULL DEFAULT 0, retired INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS quarantine (
    id BLOB NOT NULL, pack INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL, file TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoreStats:
    """What the store holds: live chunks, their bytes, and the space compaction can reclaim."""

    chunks: int
    stored_bytes: int
    packs: int
    pack_bytes: int
    garbage_bytes: int


class ChunkStore(StoreUpkeep):
    """Chunks as records appended to pack files, found through a SQLite index.

    On-disk layout::

        folder/
            lock                  flock-ed while a process has the store open
            index.sqlite          (+ -wal) chunk id -> pack, offset, length, checksum
            packs/00000001.pack   PACK_MAGIC, then records, appended only (see nodes.packs)
            packs/00000002.pack   ...
            quarantine/           raw bytes of copies that failed a check

    The index also keeps per pack its committed size, live bytes and chunks (for garbage
    accounting) and a `retired` mark used by compaction.

    Durability: `sync` fsyncs the open pack, then commits the index, so a committed index
    row never points at data that is not on disk. Sealing a pack fsyncs it first. On open,
    records past a pack's committed size that are whole and verify are indexed (puts that
    reached the disk but whose commit did not), the first bad one and everything after it
    is cut off, and rows pointing past a pack's end are dropped. Compaction copies live
    records, commits the new places with the old pack marked retired, and only then
    deletes the old pack. One lock serialises every call; memory stays bounded by
    SQLite's page cache whatever the number of chunks.
    """

    def __init__(
        self, folder: Path, *, pack_limit: int = DEFAULT_PACK_LIMIT, cache_mib: int = 16
    ) -> None:
        self.folder = Path(folder)
        self.pack_limit = pack_limit
        self._lock = threading.RLock()
        self._packs = PackFiles(self.folder / "packs", pack_limit)
        self._quarantine_dir = self.folder / "quarantine"
        self._lock_fd = -1
        self._closed = False
        try:
            self._open(cache_mib)
        except BaseException:
            self._release()
            raise

    def _open(self, cache_mib: int) -> None:
        with self._guard():
            self._packs.folder.mkdir(parents=True, exist_ok=True)
            self._quarantine_dir.mkdir(exist_ok=True)
            self._take_lock()
            self._db = sqlite3.connect(
                self.folder / "index.sqlite", isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
            self._db.executescript(_SCHEMA)
            self.recovery = self._recover()
            self._open_active()

    def _open_active(self) -> None:
        """Go on appending to the newest pack unless it is full."""
        row = self._db.execute("SELECT pack, size FROM packs ORDER BY pack DESC LIMIT 1").fetchone()
        if row is not None and row[1] < self.pack_limit:
            self._packs.activate(*row)

    # -- public API ------------------------------------------------------------------

    def put(self, chunk_id: bytes, blob: bytes) -> bool:
        """Append `blob` unless the id is present; durable after the next `sync`."""
        with self._lock, self._guard():
            return self._put([(chunk_id, blob)])[0]

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, sync: bool = True) -> list[bool]:
        """Put every (id, blob) pair, then sync; True for each newly stored chunk.

        With ``sync=False`` the records are only handed to the kernel to write back, and
        become durable with the next `sync`: a caller storing many batches syncs once.
        """
        pairs = list(items)
        added: list[bool] = []
        for start in range(0, len(pairs), BATCH):
            with self._lock, self._guard():
                added += self._put(pairs[start : start + BATCH])
        with self._lock, self._guard():
            if sync:
                self._sync()
            else:
                self._packs.start_writeback()
        return added

    def sync(self) -> None:
        """Make every put so far durable: fsync the open pack, then commit the index."""
        with self._lock, self._guard():
            self._sync()

    def get(self, chunk_id: bytes) -> bytes:
        """The blob stored under `chunk_id`, checksum verified.

        A damaged copy is quarantined (so a put from a replica can repair it) and
        ChunkCorrupted raised; an absent one raises ChunkMissing.
        """
        with self._lock, self._guard():
            row = self._db.execute(
                "SELECT pack, offset, length, checksum FROM chunks WHERE id = ?", (chunk_id,)
            ).fetchone()
            if row is None:
                raise ChunkMissing(chunk_id)
            place = Place(chunk_id, *row)
            try:
                return self._packs.read(place)
            except ChunkCorrupted as err:
                self._quarantine(place, err.reason)
                self._sync()
                raise

    def get_many(self, ids: Iterable[bytes]) -> list[bytes | None]:
        """The blob of each id, checksum verified, or None for an absent or damaged one.

        Damaged copies are quarantined, as by `get`. Records are read in file order,
        neighbours together.
        """
        wanted = list(ids)
        with self._lock, self._guard():
            rows: dict[bytes, Place] = {}
            for start in range(0, len(wanted), BATCH):
                batch = wanted[start : start + BATCH]
                marks = ",".join("?" * len(batch))
                for row in self._db.execute(
                    f"SELECT id, pack, offset, length, checksum FROM chunks WHERE id IN ({marks})",
                    batch,
                ):
                    rows[row[0]] = Place(*row)
            places = list(rows.values())
            read = self._packs.read_many(places)
            blobs = dict(zip(rows, read, strict=True))
            pairs = zip(places, read, strict=True)
            bad = [(p, r) for p, r in pairs if isinstance(r, ChunkCorrupted)]
            for place, error in bad:
                self._quarantine(place, error.reason)
            if bad:
                self._sync()
        found: list[bytes | None] = []
        for chunk_id in wanted:
            blob = blobs.get(chunk_id)
            found.append(blob if isinstance(blob, bytes) else None)
        return found

    def has_many(self, ids: Iterable[bytes]) -> list[bool]:
        """For each id, whether the store holds it."""
        wanted = list(ids)
        found: set[bytes] = set()
        with self._lock, self._guard():
            for start in range(0, len(wanted), BATCH):
                batch = wanted[start : start + BATCH]
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", batch)
                found.update(row[0] for row in rows)
        return [chunk_id in found for chunk_id in wanted]

    def delete_many(self, ids: Iterable[bytes]) -> int:
        """Drop chunks from the index (their space returns with `compact`); how many were."""
        wanted = list(dict.fromkeys(ids))
        deleted = 0
        with self._lock, self._guard():
            for start in range(0, len(wanted), BATCH):
                batch = wanted[start : start + BATCH]
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(
                    f"SELECT pack, length FROM chunks WHERE id IN ({marks})", batch
                ).fetchall()
                self._begin()
                self._db.execute(f"DELETE FROM chunks WHERE id IN ({marks})", batch)
                for pack, length in rows:
                    self._account(pack, length, -1)
                deleted += len(rows)
            self._sync()
        return deleted

    def ids(self, after: bytes = b"") -> Iterator[bytes]:
        """Every chunk id greater than `after`, in order, read from the index page by page."""
        while True:
            with self._lock, self._guard():
                rows = self._db.execute(
                    "SELECT id FROM chunks WHERE id > ? ORDER BY id LIMIT ?", (after, 1024)
                ).fetchall()
            if not rows:
                return
            for (chunk_id,) in rows:
                yield chunk_id
            after = rows[-1][0]

    def stats(self) -> StoreStats:
        """Counts and sizes from the per-pack totals the index keeps."""
        with self._lock, self._guard():
            packs, size, live, chunks = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(live_bytes), 0),"
                " COALESCE(SUM(live_chunks), 0) FROM packs WHERE retired = 0"
            ).fetchone()
        garbage = size - live - packs * len(PACK_MAGIC)
        return StoreStats(chunks, live - chunks * RECORD.size, packs, size, garbage)

    def close(self) -> None:
        """Sync and release every file; the store cannot be used afterwards."""
        with self._lock:
            if self._closed:
                return
            try:
                with self._guard():
                    self._sync()
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        self._packs.close()
        if hasattr(self, "_db"):
            self._db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------

    def _put(self, pairs: list[tuple[bytes, bytes]]) -> list[bool]:
        """Append the blobs whose ids are neither stored nor earlier in `pairs`; which were."""
        for chunk_id, blob in pairs:
            if len(chunk_id) != ID_SIZE or len(blob) > MAX_BLOB:
                raise ValueError("a chunk id is 32 bytes and a blob at most 4 GiB - 1")
        marks = ",".join("?" * len(pairs))
        rows = self._db.execute(
            f"SELECT id FROM chunks WHERE id IN ({marks})", [chunk_id for chunk_id, _ in pairs]
        )
        seen = {row[0] for row in rows}
        added: list[bool] = []
        records: list[Record] = []
        for chunk_id, blob in pairs:
            added.append(chunk_id not in seen)
            if chunk_id not in seen:
                seen.add(chunk_id)
                records.append((chunk_id, blob, record_checksum(chunk_id, blob)))
        self._append(records)
        return added

    def _append(self, records: list[Record]) -> None:
        """Write records to the open pack, a run per system call, and index them."""
        start = 0
        while start < len(records):
            if self._packs.needs_roll(RECORD.size + len(records[start][1])):
                self._roll()
            room = self._packs.limit - self._packs.end
            stop, size = start + 1, RECORD.size + len(records[start][1])
            while stop < len(records) and size + RECORD.size + len(records[stop][1]) <= room:
                size += RECORD.size + len(records[stop][1])
                stop += 1
            self._append_run(records[start:stop])
            start = stop

    def _append_run(self, run: list[Record]) -> None:
        """Write records that fit the open pack and index them in the current transaction."""
        pack, offsets = self._packs.write(run)
        end = offsets[-1] + RECORD.size + len(run[-1][1])
        self._begin()
        rows = [
            (chunk_id, pack, at, len(blob), checksum)
            for (chunk_id, blob, checksum), at in zip(run, offsets, strict=True)
        ]
        self._db.executemany(
            "INSERT INTO chunks (id, pack, offset, length, checksum) VALUES (?, ?, ?, ?, ?)", rows
        )
        self._db.execute(
            "UPDATE packs SET size = ?, live_bytes = live_bytes + ?,"
            " live_chunks = live_chunks + ? WHERE pack = ?",
            (end, end - offsets[0], len(run), pack),
        )
        self._packs.advance(end)

    def _roll(self) -> None:
        """Seal the open pack (fsync) and start the next one."""
        self._packs.sync()
        top = self._db.execute("SELECT COALESCE(MAX(pack), 0) FROM packs").fetchone()[0]
        pack = self._packs.create(top)
        self._begin()
        self._db.execute("INSERT INTO packs (pack, size) VALUES (?, ?)", (pack, len(PACK_MAGIC)))
        self._packs.activate(pack, len(PACK_MAGIC))

    def _sync(self) -> None:
        self._packs.sync()
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    def _account(self, pack: int, length: int, count: int) -> None:
        """Add (count = 1) or remove (count = -1) one record from a pack's live totals."""
        self._db.execute(
            "UPDATE packs SET live_bytes = live_bytes + ?, live_chunks = live_chunks + ?"
            " WHERE pack = ?",
            (count * (RECORD.size + length), count, pack),
        )

    # -- process lock and errors -----------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise ChunkStoreError(str(self.folder), "in use by another process") from err
        self._lock_fd = fd

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Translate the index's and the file system's errors into ChunkStoreError."""
        if self._closed:
            raise ChunkStoreError(str(self.folder), "closed")
        try:
            yield
        except (sqlite3.Error, OSError) as err:
            raise ChunkStoreError(str(self.folder), str(err)) from err
