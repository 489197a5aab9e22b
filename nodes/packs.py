"""Pack files: the append-only files of self-describing chunk records a chunk store keeps.

A pack is PACK_MAGIC followed by records, each written once and never changed::

    record = magic "VCR1" (4) | chunk id (32) | blob length (u32 BE) |
             BLAKE3(id || blob) (32) | blob

Records describe themselves, so a pack can be verified or re-indexed on its own.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from nodes.errors import ChunkCorrupted

DEFAULT_PACK_LIMIT = 256 * 1024 * 1024
"""A pack is sealed and a new one started when the next record would pass this size."""
PACK_MAGIC = b"VMSNPAK1"
RECORD_MAGIC = b"VCR1"
RECORD = struct.Struct(">4s32sI32s")
"""Record header: magic, chunk id, blob length, BLAKE3 of id followed by blob."""
ID_SIZE = 32
MAX_BLOB = 2**32 - 1
_OPEN_PACKS = 32
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
Record = tuple[bytes, bytes, bytes]
"""A record to write: chunk id, blob, checksum."""


@dataclass(frozen=True)
class Place:
    """Where a record lies, with the id, blob length and checksum its header must carry."""

    chunk_id: bytes
    pack: int
    offset: int
    length: int
    checksum: bytes


def record_checksum(chunk_id: bytes, blob: bytes | memoryview) -> bytes:
    """BLAKE3 of the chunk id followed by the blob, as a record header carries it."""
    return blake3.blake3(chunk_id).update(blob).digest()


def record_header(chunk_id: bytes, length: int, checksum: bytes) -> bytes:
    """The header written before a blob of `length` bytes."""
    return RECORD.pack(RECORD_MAGIC, chunk_id, length, checksum)


def parse_record(place: Place, data: bytes) -> bytes:
    """The blob of the record `data` read at `place`; ChunkCorrupted if it does not check out."""
    if len(data) != RECORD.size + place.length:
        raise ChunkCorrupted(place.chunk_id, "record cut short")
    magic, chunk_id, length, checksum = RECORD.unpack_from(data)
    blob = memoryview(data)[RECORD.size :]
    expected = (RECORD_MAGIC, place.chunk_id, place.length, place.checksum)
    if (magic, chunk_id, length, checksum) != expected:
        raise ChunkCorrupted(place.chunk_id, "record header does not match the index")
    if record_checksum(chunk_id, blob) != checksum:
        raise ChunkCorrupted(place.chunk_id, "checksum mismatch")
    return bytes(blob)


class PackFiles:
    """The pack files of one folder: the open one records are appended to, and open handles.

    Files are named by pack number, ``00000001.pack``; at most a fixed number are held
    open, least recently used closed first, never the open pack. A new pack gets its magic
    and is fsynced, with the folder, before any record goes in; sealing the open pack, or
    `sync`, fsyncs the records appended since. A record written to the open pack only
    counts once `advance` moves the pack's end past it, so a record that could not be
    indexed is overwritten by the next one.
    """

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.active: int | None = None
        self.end = 0
        self._unsynced = False
        self._flushing = 0
        self._fds: OrderedDict[int, int] = OrderedDict()

    # -- appending -----------------------------------------------------------------------

    def needs_roll(self, size: int) -> bool:
        """Whether a record of `size` bytes must start a new pack (none is open, or it is full)."""
        return self.active is None or (self.end + size > self.limit and self.end > len(PACK_MAGIC))

    def create(self, above: int) -> int:
        """Start a pack numbered past `above` and every pack file; its number (not yet open)."""
        pack = max([above, *self.numbers()]) + 1
        fd = os.open(self.path(pack), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        _write_all(fd, [PACK_MAGIC], 0)
        os.fsync(fd)
        _fsync_dir(self.folder)
        self._remember(pack, fd)
        return pack

    def activate(self, pack: int, end: int) -> None:
        """Append to `pack` from `end` on."""
        self.active, self.end, self._flushing = pack, end, end
        self.fd(self.active, writable=True)

    def stop_appending_to(self, pack: int) -> None:
        """If `pack` is the open one, the next record starts a new pack instead."""
        if pack == self.active:
            self.active = None

    def write(self, records: Sequence[Record]) -> tuple[int, list[int]]:
        """Write records back to back at the open pack's end, cut off again if that fails.

        Returns the pack and each record's offset. Headers and blobs go out together
        in as few vectored writes as the system allows, the blobs never copied.
        """
        assert self.active is not None
        fd, start = self._fds[self.active], self.end
        parts: list[bytes] = []
        offsets: list[int] = []
        offset = start
        for chunk_id, blob, checksum in records:
            parts += (record_header(chunk_id, len(blob), checksum), blob)
            offsets.append(offset)
            offset += RECORD.size + len(blob)
        try:
            _write_all(fd, parts, start)
        except OSError:
            os.ftruncate(fd, start)
            raise
        return self.active, offsets

    def advance(self, end: int) -> None:
        """Keep the records written up to `end`; they are fsynced by the next `sync`."""
        self.end = end
        self._unsynced = True

    def sync(self) -> None:
        """Fsync the open pack if records were appended since the last sync."""
        if self.active is not None and self._unsynced:
            os.fsync(self._fds[self.active])
        self._unsynced = False
        self._flushing = self.end

    def start_writeback(self) -> None:
        """Let the kernel start writing the records appended since the last call, not waiting.

        A later `sync` then has little left to write; the pages also leave the cache
        once written (a backup node rarely reads a chunk it has just stored).
        """
        if self.active is not None and self.end > self._flushing:
            fd = self._fds[self.active]
            os.posix_fadvise(fd, self._flushing, self.end - self._flushing, os.POSIX_FADV_DONTNEED)
            self._flushing = self.end

    # -- reading and scanning ------------------------------------------------------------

    def read(self, place: Place) -> bytes:
        """The blob at `place`, or ChunkCorrupted if the record does not check out."""
        try:
            data = self.record_bytes(place)
        except OSError as err:
            raise ChunkCorrupted(place.chunk_id, f"unreadable: {err}") from err
        return parse_record(place, data)

    def record_bytes(self, place: Place) -> bytes:
        """The raw bytes of the record at `place`, unchecked."""
        return os.pread(self.fd(place.pack), RECORD.size + place.length, place.offset)

    def inspect(self, pack: int) -> tuple[int, bool]:
        """Open `pack` for writing; its size and whether it starts with PACK_MAGIC."""
        fd = self.fd(pack, writable=True)
        size = os.fstat(fd).st_size
        return size, os.pread(fd, len(PACK_MAGIC), 0) == PACK_MAGIC

    def scan(self, pack: int, start: int, end: int) -> Iterator[Place]:
        """The whole, valid records from `start` to `end`, up to the first bad one."""
        fd = self.fd(pack)
        offset = start
        while offset + RECORD.size <= end:
            magic, chunk_id, length, checksum = RECORD.unpack(os.pread(fd, RECORD.size, offset))
            if magic != RECORD_MAGIC or offset + RECORD.size + length > end:
                return
            blob = os.pread(fd, length, offset + RECORD.size)
            if record_checksum(chunk_id, blob) != checksum:
                return
            yield Place(chunk_id, pack, offset, length, checksum)
            offset += RECORD.size + length

    # -- files ---------------------------------------------------------------------------

    def truncate(self, pack: int, end: int) -> None:
        """Cut `pack` to `end` bytes, durably."""
        fd = self.fd(pack, writable=True)
        os.ftruncate(fd, end)
        os.fsync(fd)

    def remove(self, pack: int, *, missing_ok: bool = False) -> None:
        """Close and delete a pack's file, durably."""
        fd = self._fds.pop(pack, None)
        if fd is not None:
            os.close(fd)
        self.path(pack).unlink(missing_ok=missing_ok)
        _fsync_dir(self.folder)

    def path(self, pack: int) -> Path:
        """The file of pack number `pack`."""
        return self.folder / f"{pack:08d}.pack"

    def numbers(self) -> list[int]:
        """The numbers of the pack files present."""
        return [int(p.stem) for p in self.folder.glob("*.pack") if p.stem.isdigit()]

    def fd(self, pack: int, *, writable: bool = False) -> int:
        """A cached handle on `pack`, opened on first use."""
        fd = self._fds.get(pack)
        if fd is None:
            fd = os.open(self.path(pack), os.O_RDWR if writable else os.O_RDONLY)
            self._remember(pack, fd)
        self._fds.move_to_end(pack)
        return fd

    def close(self) -> None:
        """Close every cached handle."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _remember(self, pack: int, fd: int) -> None:
        self._fds[pack] = fd
        while len(self._fds) > _OPEN_PACKS:
            old = next(p for p in self._fds if p != self.active and p != pack)
            os.close(self._fds.pop(old))


def _write_all(fd: int, parts: list[bytes], offset: int) -> None:
    """Write `parts` at `offset` in order, in as few `pwritev` calls as IOV_MAX allows."""
    first = 0
    head: bytes | memoryview = parts[0] if parts else b""
    while first < len(parts):
        written = os.pwritev(fd, [head, *parts[first + 1 : first + _IOV_MAX]], offset)
        offset += written
        while first < len(parts) and written >= len(head):
            written -= len(head)
            first += 1
            head = parts[first] if first < len(parts) else b""
        if written:
            head = memoryview(head)[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
