"""The backup node's chunk store: append-only pack files plus a SQLite index."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3

from nodes.errors import ChunkCorrupted, ChunkMissing, ChunkStoreError

log = logging.getLogger("vmsnap.chunks")

DEFAULT_PACK_LIMIT = 256 * 1024 * 1024
"""A pack is sealed and a new one started when the next record would pass this size."""
PACK_MAGIC = b"VMSNPAK1"
RECORD_MAGIC = b"VCR1"
RECORD = struct.Struct(">4s32sI32s")
"""Record header: magic, chunk id, blob length, BLAKE3 of id followed by blob."""
ID_SIZE = 32
MAX_BLOB = 2**32 - 1
_BATCH = 500
_OPEN_PACKS = 32

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


@dataclass(frozen=True)
class _Place:
    chunk_id: bytes
    pack: int
    offset: int
    length: int
    checksum: bytes


def _checksum(chunk_id: bytes, blob: bytes | memoryview) -> bytes:
    return blake3.blake3(chunk_id).update(blob).digest()


class ChunkStore:
    """Chunks as records appended to pack files, found through a SQLite index.

    On-disk layout::

        folder/
            lock                  flock-ed while a process has the store open
            index.sqlite          (+ -wal) chunk id -> pack, offset, length, checksum
            packs/00000001.pack   PACK_MAGIC, then records, appended only
            packs/00000002.pack   ...
            quarantine/           raw bytes of copies that failed a check

        record = magic "VCR1" (4) | chunk id (32) | blob length (u32 BE) |
                 BLAKE3(id || blob) (32) | blob

    Records describe themselves, so a pack can be verified or re-indexed on its own. The
    index also keeps per pack its committed size, live bytes and chunks (for garbage
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
        self._packs_dir = self.folder / "packs"
        self._quarantine_dir = self.folder / "quarantine"
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._active: int | None = None
        self._end = 0
        self._unsynced = False
        self._lock_fd = -1
        self._closed = False
        try:
            self._open(cache_mib)
        except BaseException:
            self._release()
            raise

    def _open(self, cache_mib: int) -> None:
        with self._guard():
            self._packs_dir.mkdir(parents=True, exist_ok=True)
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

    # -- public API ------------------------------------------------------------------

    def put(self, chunk_id: bytes, blob: bytes) -> bool:
        """Append `blob` unless the id is present; durable after the next `sync`."""
        with self._lock, self._guard():
            return self._put(chunk_id, blob)

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[bool]:
        """Put every (id, blob) pair, then sync; True for each newly stored chunk."""
        added = []
        for chunk_id, blob in items:
            with self._lock, self._guard():
                added.append(self._put(chunk_id, blob))
        self.sync()
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
            place = _Place(chunk_id, *row)
            try:
                return self._read(place)
            except ChunkCorrupted as err:
                self._quarantine(place, err.reason)
                self._sync()
                raise

    def has_many(self, ids: Iterable[bytes]) -> list[bool]:
        """For each id, whether the store holds it."""
        wanted = list(ids)
        found: set[bytes] = set()
        with self._lock, self._guard():
            for start in range(0, len(wanted), _BATCH):
                batch = wanted[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", batch)
                found.update(row[0] for row in rows)
        return [chunk_id in found for chunk_id in wanted]

    def delete_many(self, ids: Iterable[bytes]) -> int:
        """Drop chunks from the index (their space returns with `compact`); how many were."""
        wanted = list(dict.fromkeys(ids))
        deleted = 0
        with self._lock, self._guard():
            for start in range(0, len(wanted), _BATCH):
                batch = wanted[start : start + _BATCH]
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
                    (*after, _BATCH),
                ).fetchall()
                for row in rows:
                    place = _Place(*row)
                    try:
                        self._read(place)
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
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
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

    def _put(self, chunk_id: bytes, blob: bytes) -> bool:
        if len(chunk_id) != ID_SIZE or len(blob) > MAX_BLOB:
            raise ValueError("a chunk id is 32 bytes and a blob at most 4 GiB - 1")
        exists = self._db.execute("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        if exists:
            return False
        self._append(chunk_id, blob, _checksum(chunk_id, blob))
        return True

    def _append(self, chunk_id: bytes, blob: bytes, checksum: bytes) -> None:
        """Write a record to the open pack and index it in the current transaction."""
        size = RECORD.size + len(blob)
        if self._active is None or (
            self._end + size > self.pack_limit and self._end > len(PACK_MAGIC)
        ):
            self._roll()
        assert self._active is not None
        fd, offset = self._fds[self._active], self._end
        header = RECORD.pack(RECORD_MAGIC, chunk_id, len(blob), checksum)
        try:
            _write_all(fd, [header, blob], offset)
        except OSError:
            os.ftruncate(fd, offset)
            raise
        self._begin()
        self._db.execute(
            "INSERT INTO chunks (id, pack, offset, length, checksum) VALUES (?, ?, ?, ?, ?)",
            (chunk_id, self._active, offset, len(blob), checksum),
        )
        self._db.execute("UPDATE packs SET size = ? WHERE pack = ?", (offset + size, self._active))
        self._account(self._active, len(blob), 1)
        self._end = offset + size
        self._unsynced = True

    def _roll(self) -> None:
        """Seal the open pack (fsync) and start the next one."""
        if self._active is not None and self._unsynced:
            os.fsync(self._fds[self._active])
            self._unsynced = False
        top = self._db.execute("SELECT COALESCE(MAX(pack), 0) FROM packs").fetchone()[0]
        pack = max([top, *self._pack_files()]) + 1
        fd = os.open(self._path(pack), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        _write_all(fd, [PACK_MAGIC], 0)
        os.fsync(fd)
        _fsync_dir(self._packs_dir)
        self._remember_fd(pack, fd)
        self._begin()
        self._db.execute("INSERT INTO packs (pack, size) VALUES (?, ?)", (pack, len(PACK_MAGIC)))
        self._active, self._end = pack, len(PACK_MAGIC)

    def _sync(self) -> None:
        if self._active is not None and self._unsynced:
            os.fsync(self._fds[self._active])
        self._unsynced = False
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

    # -- reading, compaction and quarantine --------------------------------------------------

    def _read(self, place: _Place) -> bytes:
        """The blob at `place`, or ChunkCorrupted if the record does not check out."""
        size = RECORD.size + place.length
        try:
            data = os.pread(self._fd(place.pack), size, place.offset)
        except OSError as err:
            raise ChunkCorrupted(place.chunk_id, f"unreadable: {err}") from err
        if len(data) != size:
            raise ChunkCorrupted(place.chunk_id, "record cut short")
        magic, chunk_id, length, checksum = RECORD.unpack_from(data)
        blob = memoryview(data)[RECORD.size :]
        expected = (RECORD_MAGIC, place.chunk_id, place.length, place.checksum)
        if (magic, chunk_id, length, checksum) != expected:
            raise ChunkCorrupted(place.chunk_id, "record header does not match the index")
        if _checksum(chunk_id, blob) != checksum:
            raise ChunkCorrupted(place.chunk_id, "checksum mismatch")
        return bytes(blob)

    def _compact_pack(self, pack: int) -> int:
        """Move the live records of `pack` to the open pack, delete it; net bytes freed."""
        self._sync()
        if pack == self._active:
            self._active = None
        before = self._pack_bytes()
        after = -1
        while rows := self._db.execute(
            "SELECT id, pack, offset, length, checksum FROM chunks"
            " WHERE pack = ? AND offset > ? ORDER BY offset LIMIT ?",
            (pack, after, _BATCH),
        ).fetchall():
            for row in rows:
                place = _Place(*row)
                after = place.offset
                try:
                    blob = self._read(place)
                except ChunkCorrupted as err:
                    self._quarantine(place, err.reason)
                    continue
                self._begin()
                self._db.execute("DELETE FROM chunks WHERE id = ?", (place.chunk_id,))
                self._account(pack, place.length, -1)
                self._append(place.chunk_id, blob, place.checksum)
        self._db.execute("UPDATE packs SET retired = 1 WHERE pack = ?", (pack,))
        self._sync()
        self._drop_pack_file(pack)
        reclaimed = before - self._pack_bytes()
        log.info("compacted pack %d: %d bytes reclaimed", pack, reclaimed)
        return reclaimed

    def _pack_bytes(self) -> int:
        query = "SELECT COALESCE(SUM(size), 0) FROM packs WHERE retired = 0"
        total: int = self._db.execute(query).fetchone()[0]
        return total

    def _drop_pack_file(self, pack: int) -> None:
        """Delete a retired pack's file, then its index row."""
        fd = self._fds.pop(pack, None)
        if fd is not None:
            os.close(fd)
        self._path(pack).unlink(missing_ok=True)
        _fsync_dir(self._packs_dir)
        self._db.execute("DELETE FROM packs WHERE pack = ?", (pack,))

    def _quarantine(self, place: _Place, reason: str) -> None:
        """Keep the bad copy's bytes aside and drop it from the index."""
        try:
            raw = os.pread(self._fd(place.pack), RECORD.size + place.length, place.offset)
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

    # -- opening -------------------------------------------------------------------------

    def _recover(self) -> Recovery:
        """Bring index and packs into agreement after a crash; see the class docstring."""
        dropped = reindexed = truncated = 0
        self._begin()
        for (pack,) in self._db.execute("SELECT pack FROM packs WHERE retired = 1").fetchall():
            self._drop_pack_file(pack)
        on_disk = set(self._pack_files())
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
        """Make one pack file and its index rows agree; (dropped, reindexed, cut bytes)."""
        row = self._db.execute("SELECT size FROM packs WHERE pack = ?", (pack,)).fetchone()
        committed = row[0] if row else 0
        fd = self._fd(pack, writable=True)
        actual = os.fstat(fd).st_size
        dropped = reindexed = 0
        magic = os.pread(fd, len(PACK_MAGIC), 0)
        if actual < len(PACK_MAGIC) or (committed == 0 and magic != PACK_MAGIC):
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
            end, reindexed = self._scan_tail(pack, fd, max(committed, len(PACK_MAGIC)), actual)
        if end == 0:
            self._drop_empty(pack)
            return dropped, reindexed, actual
        if end != actual:
            os.ftruncate(fd, end)
            os.fsync(fd)
            log.warning("pack %d: %d bytes cut from a damaged tail", pack, actual - end)
        live, chunks = self._db.execute(
            "SELECT COALESCE(SUM(length), 0), COUNT(*) FROM chunks WHERE pack = ?", (pack,)
        ).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO packs (pack, size, live_bytes, live_chunks) VALUES (?,?,?,?)",
            (pack, end, live + chunks * RECORD.size, chunks),
        )
        return dropped, reindexed, actual - end

    def _scan_tail(self, pack: int, fd: int, start: int, actual: int) -> tuple[int, int]:
        """Index the whole, valid records from `start`; (end of the last one, count)."""
        offset, found = start, 0
        while offset + RECORD.size <= actual:
            magic, chunk_id, length, checksum = RECORD.unpack(os.pread(fd, RECORD.size, offset))
            if magic != RECORD_MAGIC or offset + RECORD.size + length > actual:
                break
            blob = os.pread(fd, length, offset + RECORD.size)
            if _checksum(chunk_id, blob) != checksum:
                break
            found += self._db.execute(
                "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)",
                (chunk_id, pack, offset, length, checksum),
            ).rowcount
            offset += RECORD.size + length
        return offset, found

    def _drop_empty(self, pack: int) -> None:
        """Remove a pack file too short to hold even its header."""
        os.close(self._fds.pop(pack))
        self._path(pack).unlink()
        _fsync_dir(self._packs_dir)
        self._db.execute("DELETE FROM packs WHERE pack = ?", (pack,))

    def _open_active(self) -> None:
        row = self._db.execute("SELECT pack, size FROM packs ORDER BY pack DESC LIMIT 1").fetchone()
        if row is not None and row[1] < self.pack_limit:
            self._active, self._end = row
            self._fd(self._active, writable=True)

    # -- files ---------------------------------------------------------------------------

    def _path(self, pack: int) -> Path:
        return self._packs_dir / f"{pack:08d}.pack"

    def _pack_files(self) -> list[int]:
        return [int(p.stem) for p in self._packs_dir.glob("*.pack") if p.stem.isdigit()]

    def _fd(self, pack: int, *, writable: bool = False) -> int:
        fd = self._fds.get(pack)
        if fd is None:
            fd = os.open(self._path(pack), os.O_RDWR if writable else os.O_RDONLY)
            self._remember_fd(pack, fd)
        self._fds.move_to_end(pack)
        return fd

    def _remember_fd(self, pack: int, fd: int) -> None:
        self._fds[pack] = fd
        while len(self._fds) > _OPEN_PACKS:
            old = next(p for p in self._fds if p != self._active and p != pack)
            os.close(self._fds.pop(old))

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


def _write_all(fd: int, parts: list[bytes], offset: int) -> None:
    buffers: list[bytes | memoryview] = list(parts)
    while buffers:
        written = os.pwritev(fd, buffers, offset)
        offset += written
        while buffers and written >= len(buffers[0]):
            written -= len(buffers[0])
            buffers.pop(0)
        if buffers and written:
            buffers[0] = memoryview(buffers[0])[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
