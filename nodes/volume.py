"""Business volumes: sparse chunk arrays written in place, with O(1) frozen views."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from nodes.block_masks import BLOCK
from nodes.blockdev import Extent
from nodes.errors import VolumeError
from nodes.frozen_view import FrozenView
from nodes.sparse import extents, zero_range
from nodes.volume_masks import GenerationMasks
from nodes.volume_meta import connect
from nodes.volume_reads import VolumeReads

__all__ = ["BLOCK", "DEFAULT_CHUNK", "ViewInfo", "Volume"]

DEFAULT_CHUNK = 64 * 1024
BASE_HISTORY = 256
"""Views made the base that a volume remembers, newest first (`Volume.base_generation_of`)."""


@dataclass(frozen=True)
class ViewInfo:
    """A frozen view: its name and the write generation it froze."""

    name: str
    generation: int


class Volume(VolumeReads):
    """A VM disk: a fixed-size array of chunks in a sparse file, written in place.

    Layout of the volume's folder::

        data.raw      sparse file of ``size`` bytes: the live contents
        cow.data      chunks preserved for frozen views, appended
        meta.sqlite   the generations of chunks and views, where preserved chunks are,
                      the block masks (its tables: nodes/volume_meta.py)

    Every write belongs to the current generation. Freezing a view records the
    generation and starts a new one: metadata only. The first write to a chunk
    in a generation copies the chunk's old contents to ``cow.data`` if a live
    view still sees them, and records the chunk's new generation; that
    metadata is committed *before* the data is written, so after a ``kill -9``
    every frozen view still reads what it froze and no written chunk is
    missing from the dirty set. ``flush`` makes everything durable.

    Commits on the write path only append to SQLite's write-ahead log: the log is
    copied back into ``meta.sqlite`` (a checkpoint, which fsyncs) by ``checkpoint``,
    on its own connection, never by a write.

    Dirty tracking: the chunks changed since the base generation (that of the
    last committed snapshot's view) are those whose generation is newer. Within a
    chunk, the 4 KiB blocks each generation wrote are kept by ``GenerationMasks``
    (nodes/volume_masks.py), sealed by the freeze that ends the generation.
    """

    def __init__(self, folder: Path, db: sqlite3.Connection) -> None:
        self.folder = folder
        self._db = db
        size, chunk, gen, base, base_view = db.execute(
            "SELECT size, chunk_size, generation, base_generation, base_view FROM volume"
        ).fetchone()
        self.base_view: str | None = base_view
        self._size, self.chunk_size = int(size), int(chunk)
        self._gen, self._base = int(gen), int(base)
        self.chunks = -(-self._size // self.chunk_size)
        self._data = os.open(folder / "data.raw", os.O_RDWR)
        self._cow = os.open(folder / "cow.data", os.O_RDWR | os.O_CREAT, 0o600)
        self._cow_end = os.fstat(self._cow).st_size
        self._fresh = bytearray(-(-self.chunks // 8))
        self._views: dict[str, int] = dict(db.execute("SELECT name, gen FROM views"))
        self._masks = GenerationMasks(db, self._size, self.chunk_size)
        self._lock = threading.Lock()
        self._checkpointer = sqlite3.connect(folder / "meta.sqlite", check_same_thread=False)

    @classmethod
    def create(cls, folder: Path, size: int, chunk_size: int = DEFAULT_CHUNK) -> Volume:
        """Create an empty (all holes) volume of `size` bytes."""
        if size <= 0 or chunk_size <= 0 or chunk_size & (chunk_size - 1):
            raise VolumeError(f"invalid volume geometry: size {size}, chunk size {chunk_size}")
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise VolumeError(f"a volume already exists in {folder}") from None
        try:
            with (folder / "data.raw").open("wb") as data:
                data.truncate(size)
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise VolumeError(f"cannot hold {size} bytes in {folder}: {err.strerror}") from None
        db = connect(folder)
        with db:
            db.execute("INSERT INTO volume VALUES (1, ?, ?, 1, 0, NULL)", (size, chunk_size))
        return cls(folder, db)

    @classmethod
    def open(cls, folder: Path) -> Volume:
        """Open an existing volume."""
        if not (folder / "meta.sqlite").exists():
            raise VolumeError(f"no volume in {folder}")
        return cls(folder, connect(folder))

    # -- BlockDevice ----------------------------------------------------------

    @property
    def read_only(self) -> bool:
        """The live volume is writable."""
        return False

    async def read(self, offset: int, length: int) -> bytes:
        """Read the live contents."""
        return self.read_live(offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        """Write in place, preserving what frozen views still need first."""
        self.write_live(offset, data)
        if fua:
            await asyncio.to_thread(self.sync)

    async def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        """Zero a range: whole chunks become holes, partial ones are written."""
        self.zero_live(offset, length)

    async def trim(self, offset: int, length: int) -> None:
        """Discard a range (it reads as zeros afterwards)."""
        self.zero_live(offset, length)

    async def flush(self) -> None:
        """Make every completed write durable."""
        await asyncio.to_thread(self.sync)

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        """Report holes and data from the sparse file."""
        return extents(self._data, offset, min(length, self._size - offset))

    # -- synchronous core -----------------------------------------------------

    def read_live(self, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset` of the live volume."""
        self._check(offset, length)
        data = os.pread(self._data, length, offset)
        return data if len(data) == length else data + bytes(length - len(data))

    def write_live(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`."""
        self._check(offset, len(data))
        with self._lock:
            self._touch(offset, len(data))
            os.pwrite(self._data, data, offset)

    def zero_live(self, offset: int, length: int) -> None:
        """Make a range read as zeros."""
        self._check(offset, length)
        with self._lock:
            self._touch(offset, length)
            zero_range(self._data, offset, length, self.chunk_size)

    def sync(self) -> None:
        """Fsync the data, the preserved chunks and the metadata."""
        with self._lock:
            os.fsync(self._cow)
            self._db.execute("PRAGMA synchronous=FULL")
            with self._db:
                self._db.execute("UPDATE volume SET generation = generation")
            self._db.execute("PRAGMA synchronous=NORMAL")
            os.fsync(self._data)

    def checkpoint(self) -> None:
        """Copy the metadata's write-ahead log into the database, without holding up writes."""
        try:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as err:
            raise VolumeError(f"cannot checkpoint the metadata of {self.folder}: {err}") from err

    def close(self) -> None:
        """Close the files."""
        os.close(self._data)
        os.close(self._cow)
        self._checkpointer.close()
        self._db.close()

    # -- views ------------------------------------------------------------------

    def freeze(self, name: str) -> ViewInfo:
        """Freeze the current contents as view `name`: metadata only, writes go on."""
        with self._lock:
            if name in self._views:
                raise VolumeError(f"view {name!r} already exists")
            frozen = self._gen
            with self._db:
                self._db.execute("INSERT INTO views VALUES (?, ?)", (name, frozen))
                self._db.execute("UPDATE volume SET generation = ?", (frozen + 1,))
                self._masks.seal(frozen)
            self._views[name] = frozen
            self._gen = frozen + 1
            self._fresh = bytearray(len(self._fresh))
            self._masks.restart()
        return ViewInfo(name, frozen)

    def views(self) -> list[ViewInfo]:
        """The live frozen views, oldest first."""
        return [ViewInfo(n, g) for n, g in sorted(self._views.items(), key=lambda v: v[1])]

    def view(self, name: str) -> FrozenView:
        """A read-only block device over view `name`."""
        if name not in self._views:
            raise VolumeError(f"no view {name!r} on this volume")
        return FrozenView(self, name, self._views[name])

    def release(self, name: str) -> bool:
        """Drop view `name` and the preserved chunks only it needed; False if it was not held."""
        with self._lock:
            if self._views.pop(name, None) is None:
                return False
            with self._db:
                self._db.execute("DELETE FROM views WHERE name = ?", (name,))
                self._drop_unneeded()
            if not self._views:
                os.ftruncate(self._cow, 0)
                self._cow_end = 0
        return True

    def commit_base(self, name: str) -> None:
        """Record that view `name` is now the last committed snapshot (the dirty baseline)."""
        with self._lock:
            gen = self._views.get(name)
            if gen is None:
                raise VolumeError(f"no view {name!r} on this volume")
            with self._db:
                # The masks since the base before this one stay: should this snapshot be
                # deleted, the next one still reads only the blocks written since its parent.
                self._masks.drop_through(self._base)
                self._db.execute(
                    "UPDATE volume SET base_generation = ?, base_view = ?", (gen, name)
                )
                self._db.execute("INSERT OR REPLACE INTO bases VALUES (?, ?)", (name, gen))
                self._db.execute(
                    "DELETE FROM bases WHERE gen < "
                    "(SELECT MIN(gen) FROM (SELECT gen FROM bases ORDER BY gen DESC LIMIT ?))",
                    (BASE_HISTORY,),
                )
            self._base = gen
            self.base_view = name

    def base_generation_of(self, name: str) -> int | None:
        """The generation view `name` froze, if it was made the base of this volume; else None.

        The chunks written after it are those with a newer generation, whatever views were
        made the base since: a snapshot whose view was the base can be the parent of an
        incremental one even after newer snapshots were deleted.
        """
        if name == self.base_view:
            return self._base
        with self._lock:
            row = self._db.execute("SELECT gen FROM bases WHERE view = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def changed_chunks(self, name: str, since: int | None = None) -> list[int]:
        """Chunks of view `name` written after generation `since` (default: the base)."""
        return self._changed(self._view_gen(name), self._base if since is None else since)

    def _view_gen(self, name: str) -> int:
        gen = self._views.get(name)
        if gen is None:
            raise VolumeError(f"no view {name!r} on this volume")
        return gen

    def _changed(self, gen: int, base: int) -> list[int]:
        rows = self._db.execute(
            "SELECT idx FROM chunks WHERE gen > ? AND gen <= ? UNION "
            "SELECT idx FROM preserved WHERE gen_from > ? AND gen_from <= ? AND gen_to >= ? "
            "ORDER BY idx",
            (base, gen, base, gen, gen),
        )
        return [int(idx) for (idx,) in rows]

    def changed_blocks(self, name: str, since: int | None = None) -> list[tuple[int, int]]:
        """`changed_chunks`, each with the mask of its blocks written after `since`.

        A mask may name a block that was not written (when a crash lost the
        generation's masks, or they predate ``mask_floor``), never miss one.
        """
        gen, base = self._view_gen(name), self._base if since is None else since
        return self._masks.changed(self._changed(gen, base), base, gen)

    def dirty_chunks(self) -> list[int]:
        """Live chunks written since the base generation."""
        rows = self._db.execute("SELECT idx FROM chunks WHERE gen > ? ORDER BY idx", (self._base,))
        return [int(idx) for (idx,) in rows]

    @property
    def base_generation(self) -> int:
        """Generation of the last committed snapshot's view (0: none yet)."""
        return self._base

    # -- internals --------------------------------------------------------------

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise VolumeError(f"range {offset}+{length} is outside the volume ({self._size} bytes)")

    def _touch(self, offset: int, length: int) -> None:
        """Before writing: preserve old contents views need, record the generation and blocks."""
        if length == 0:
            return
        size, end = self.chunk_size, offset + length
        first, last = offset // size, (end - 1) // size
        fresh = [i for i in range(first, last + 1) if not self._fresh[i >> 3] & (1 << (i & 7))]
        if fresh:
            self._masks.mark(offset, end, first, last, self._first_writes(fresh))
        elif first == last:
            self._masks.mark_within(first, offset, end)
        else:
            self._masks.mark(offset, end, first, last, ())

    def _first_writes(self, fresh: list[int]) -> set[int]:
        """Preserve and record chunks first written in the generation by this process.

        Returns those not already written in the generation before the volume was
        opened: their masks start here, the others stay whole.
        """
        newest_view = max(self._views.values(), default=0)
        started: set[int] = set()
        with self._db:
            for idx in fresh:
                row = self._db.execute("SELECT gen FROM chunks WHERE idx = ?", (idx,)).fetchone()
                old = row[0] if row else 0
                if old < self._gen:
                    started.add(idx)
                    if any(old <= g for g in self._views.values()):
                        self._preserve(idx, old, newest_view)
            self._db.executemany(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?)", ((i, self._gen) for i in fresh)
            )
        for idx in fresh:
            self._fresh[idx >> 3] |= 1 << (idx & 7)
        return started

    def _preserve(self, idx: int, written: int, upto: int) -> None:
        offset: int | None = None
        if written:
            data = self.read_live(idx * self.chunk_size, self._chunk_len(idx))
            if data.count(0) != len(data):
                offset = self._cow_end
                os.pwrite(self._cow, data, offset)
                self._cow_end += len(data)
        self._db.execute(
            "INSERT OR REPLACE INTO preserved VALUES (?, ?, ?, ?)", (idx, written, upto, offset)
        )

    def _drop_unneeded(self) -> None:
        gens = sorted(self._views.values())
        rows = self._db.execute("SELECT idx, gen_from, gen_to FROM preserved").fetchall()
        dead = [(i, f) for i, f, t in rows if not any(f <= g <= t for g in gens)]
        self._db.executemany("DELETE FROM preserved WHERE idx = ? AND gen_from = ?", dead)
