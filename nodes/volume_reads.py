"""Reading a volume's frozen views and live chunks, in the process that writes it or another.

A view's chunk is either still in the live file (not written since the freeze) or was
preserved in ``cow.data`` by the first write after it. A write records the chunk's new
generation, and preserves the old contents, *before* it writes the data. So a read of
the live file is the view's contents when the chunk's generation, looked up again after
the read, is still not newer than the view's: the read needs no lock that would keep the
VM's writes waiting, and works from another process that only reads the metadata.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from nodes.blockdev import Extent
from nodes.chunks import is_zero
from nodes.errors import VolumeError
from nodes.frozen_view import FrozenView
from nodes.sparse import extents, read_chunks


class VolumeReads:
    """Reads of the live chunks and frozen views of a volume's files.

    Subclasses open ``_data`` (``data.raw``), ``_cow`` (``cow.data``) and ``_db`` (the
    metadata, used under ``_lock``), and set the geometry.
    """

    folder: Path
    chunk_size: int
    chunks: int
    _size: int
    _data: int
    _cow: int
    _db: sqlite3.Connection
    _lock: threading.Lock

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    def view(self, name: str) -> FrozenView:
        """A read-only block device over view `name`."""
        raise NotImplementedError

    def _generations(self, indexes: Sequence[int]) -> dict[int, int]:
        """The generation of each written chunk among `indexes` (absent: never written)."""
        with self._lock:
            return generations(self._db, indexes)

    def _preserved(self, idx: int, gen: int) -> tuple[int | None] | None:
        """Where chunk `idx` as seen at generation `gen` lies in ``cow.data``, if preserved.

        ``(offset,)``; ``(None,)`` when the preserved contents are zeros; None when the
        chunk was not preserved for that generation.
        """
        with self._lock:
            return preserved_offset(self._db, idx, gen)

    def allocation(self, offset: int, length: int) -> list[Extent]:
        """Holes and data of the live contents."""
        return extents(self._data, offset, min(length, self._size - offset))

    def read_live_chunks(self, indexes: list[int]) -> list[bytes]:
        """Live chunks `indexes`, in order; ``b""`` for each all-zero one (holes are not read)."""
        if not all(0 <= i < self.chunks for i in indexes):
            raise VolumeError(f"chunk index outside the volume ({self.chunks} chunks)")
        found = read_chunks(self._data, indexes, self.chunk_size, self._size)
        return [b"" if is_zero(found[i]) else found[i] for i in indexes]

    def read_view_chunks(self, gen: int, indexes: Sequence[int]) -> list[bytes]:
        """Chunks `indexes` as the view frozen at `gen` sees them; ``b""`` for all-zero ones.

        One index query for the lot and one read per run of neighbouring chunks the
        view shares with the live file; runs that are holes are not read at all. A chunk
        written meanwhile had its frozen contents preserved first, and is read from there.
        """
        written = self._generations(indexes)
        shared = [i for i in indexes if written.get(i, 0) <= gen]
        found = read_chunks(self._data, shared, self.chunk_size, self._size)
        written = self._generations(shared)
        for idx in shared:
            if written.get(idx, 0) > gen:
                del found[idx]
        for idx in indexes:
            if idx not in found:
                found[idx] = self._read_preserved(gen, idx)
        return [b"" if is_zero(found[i]) else found[i] for i in indexes]

    def _read_preserved(self, gen: int, idx: int) -> bytes:
        """Chunk `idx` as preserved for the view at generation `gen`."""
        kept = self._preserved(idx, gen)
        if kept is None:
            raise VolumeError(f"chunk {idx} of the view at generation {gen} was not preserved")
        if kept[0] is None:
            return bytes(self._chunk_len(idx))
        return os.pread(self._cow, self._chunk_len(idx), kept[0])

    def _chunk_len(self, idx: int) -> int:
        return min(self.chunk_size, self._size - idx * self.chunk_size)


def preserved_offset(db: sqlite3.Connection, idx: int, gen: int) -> tuple[int | None] | None:
    """The ``preserved`` row of chunk `idx` that the view at generation `gen` sees."""
    row = db.execute(
        "SELECT offset FROM preserved WHERE idx = ? AND gen_from <= ? AND gen_to >= ?",
        (idx, gen, gen),
    ).fetchone()
    return None if row is None else (None if row[0] is None else int(row[0]),)


def generations(db: sqlite3.Connection, indexes: Sequence[int]) -> dict[int, int]:
    """The ``chunks`` rows among `indexes`: index to generation."""
    if not indexes:
        return {}
    marks = ",".join("?" * len(indexes))
    rows = db.execute(f"SELECT idx, gen FROM chunks WHERE idx IN ({marks})", list(indexes))
    return {int(idx): int(g) for idx, g in rows}


class VolumeReader(VolumeReads):
    """A volume opened read-only by a process that does not write it (the view server).

    Its metadata connection is read-only and reads what the writing process committed;
    a view is looked up on every use, so views frozen or released meanwhile are seen.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        meta = folder / "meta.sqlite"
        try:
            self.identity = meta.stat().st_ino
            self._db = sqlite3.connect(
                f"{meta.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            size, chunk = self._db.execute("SELECT size, chunk_size FROM volume").fetchone()
        except (OSError, sqlite3.Error) as err:
            raise VolumeError(f"cannot open the volume in {folder}: {err}") from None
        self._size, self.chunk_size = int(size), int(chunk)
        self.chunks = -(-self._size // self.chunk_size)
        self._lock = threading.Lock()
        self._data = os.open(folder / "data.raw", os.O_RDONLY)
        try:
            self._cow = os.open(folder / "cow.data", os.O_RDONLY)
        except OSError:
            os.close(self._data)
            raise

    def current(self) -> bool:
        """False once the volume was deleted or replaced since this reader opened it."""
        try:
            return (self.folder / "meta.sqlite").stat().st_ino == self.identity
        except OSError:
            return False

    def view(self, name: str) -> FrozenView:
        """A read-only block device over view `name`, as the writing process froze it."""
        with self._lock:
            row = self._db.execute("SELECT gen FROM views WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise VolumeError(f"no view {name!r} on this volume")
        return FrozenView(self, name, int(row[0]))

    def read_view_chunks(self, gen: int, indexes: Sequence[int]) -> list[bytes]:
        """As `VolumeReads.read_view_chunks`; fails if the view was released meanwhile.

        A released view's preserved chunks may be dropped while they are read; the view's
        existence, checked after the read, tells whether what was read is still its own.
        """
        try:
            found = super().read_view_chunks(gen, indexes)
        except VolumeError:
            self._check_held(gen)
            raise
        self._check_held(gen)
        return found

    def _check_held(self, gen: int) -> None:
        with self._lock:
            held = self._db.execute("SELECT 1 FROM views WHERE gen = ?", (gen,)).fetchone()
        if held is None:
            raise VolumeError(f"the view at generation {gen} was released while it was read")

    def close(self) -> None:
        """Close the files and the metadata connection."""
        os.close(self._data)
        os.close(self._cow)
        self._db.close()
