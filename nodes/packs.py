"""Pack files: the append-only files of self-describing chunk records a chunk store keeps.

A pack is PACK_MAGIC followed by records, each written once and never changed::

    record = magic "VCR1" (4) | chunk id (32) | blob length (u32 BE) |
             BLAKE3(id || blob) (32) | blob

Records describe themselves, so a pack can be verified or re-indexed on its own.

Records are appended with direct I/O (``O_DIRECT``) where the file system allows it: whole
aligned blocks go from a reused buffer to the disk, so storing a chunk costs no page of
cache. The last block is written whole, so until the next sync the open pack may end in
up to ALIGN - 1 zero bytes past its last record; a sync cuts them off, and so does
recovery after a crash (no record starts with a zero byte).
"""

from __future__ import annotations

import errno
import mmap
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
ALIGN = 4096
"""Direct writes start and end on multiples of this, in file offset and length."""
STAGE = 4 * 1024 * 1024
"""Bytes staged, aligned, per direct write."""
READ_GAP = 256 * 1024
"""Records of one pack at most this far apart are read with one system call..."""
READ_SPAN = 8 * 1024 * 1024
"""... that reads at most this many bytes."""
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


def parse_record(place: Place, data: bytes | memoryview) -> bytes:
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

    Appends to the open pack go through a second, direct handle when the file system
    takes one (`direct` False forces buffered writes). The bytes of the pack's last
    partial block are kept, so each direct write can rewrite that block whole.
    """

    def __init__(self, folder: Path, limit: int, *, direct: bool = True) -> None:
        self.folder = folder
        self.limit = limit
        self.active: int | None = None
        self.end = 0
        self._unsynced = False
        self._flushing = 0
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._direct = direct
        self._direct_fd = -1
        self._tail = b""
        self._written: tuple[int, bytes] | None = None
        self._padded = False
        self._stage: memoryview | None = None
        self._read_buffer: memoryview | None = None
        self._direct_reads: OrderedDict[int, int] = OrderedDict()

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
        self._leave()
        self.active, self.end, self._flushing = pack, end, end
        fd = self.fd(self.active, writable=True)
        self._written = None
        self._tail = os.pread(fd, end % ALIGN, end - end % ALIGN)
        if self._direct:
            try:
                self._direct_fd = os.open(self.path(pack), os.O_WRONLY | os.O_DIRECT)
            except (OSError, AttributeError):
                self._direct = False

    def stop_appending_to(self, pack: int) -> None:
        """If `pack` is the open one, the next record starts a new pack instead."""
        if pack == self.active:
            self._leave()

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
            if self._direct_fd >= 0:
                try:
                    self._write_direct(parts, start, offset)
                except OSError as err:
                    if err.errno != errno.EINVAL:
                        raise
                    self._end_direct()  # the file system takes no direct write of this shape
            if self._direct_fd < 0:
                _write_all(fd, parts, start)
        except OSError:
            os.ftruncate(fd, start)
            self._padded = False
            raise
        return self.active, offsets

    def advance(self, end: int) -> None:
        """Keep the records written up to `end`; they are fsynced by the next `sync`."""
        if self._written is not None and self._written[0] == end:
            self._tail = self._written[1]
        elif self._direct_fd >= 0 and self.active is not None:
            self._tail = os.pread(self._fds[self.active], end % ALIGN, end - end % ALIGN)
        self._written = None
        self.end = end
        self._unsynced = True

    def sync(self) -> None:
        """Fsync the open pack if records were appended since the last sync.

        The zero bytes a direct write left past the last record are cut off first.
        """
        if self.active is not None and (self._unsynced or self._padded):
            fd = self._fds[self.active]
            if self._padded:
                os.ftruncate(fd, self.end)
                self._padded = False
            os.fsync(fd)
        self._unsynced = False
        self._flushing = self.end

    def start_writeback(self) -> None:
        """Let the kernel start writing the records appended since the last call, not waiting.

        A later `sync` then has little left to write; the pages also leave the cache
        once written (a backup node rarely reads a chunk it has just stored). Direct
        writes have nothing to start.
        """
        if self._direct_fd < 0 and self.active is not None and self.end > self._flushing:
            fd = self._fds[self.active]
            os.posix_fadvise(fd, self._flushing, self.end - self._flushing, os.POSIX_FADV_DONTNEED)
            self._flushing = self.end

    def _write_direct(self, parts: list[bytes], start: int, stop: int) -> None:
        """Write `parts` from `start` (the pack's end) to `stop` in whole aligned blocks.

        The staged bytes begin with the kept partial block before `start`, and the last
        block is filled up with zeros; the bytes of the new partial block at `stop` are
        kept for `advance`.
        """
        if self._stage is None:
            self._stage = memoryview(mmap.mmap(-1, STAGE))
        stage, at = self._stage, start - len(self._tail)
        filled = len(self._tail)
        stage[:filled] = self._tail
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                take = min(len(view), STAGE - filled)
                stage[filled : filled + take] = view[:take]
                filled += take
                view = view[take:]
                if filled == STAGE:
                    _pwrite_all(self._direct_fd, stage, at)
                    at, filled = at + STAGE, 0
        keep = filled % ALIGN
        if filled:
            whole = filled - keep + (ALIGN if keep else 0)
            stage[filled:whole] = bytes(whole - filled)
            _pwrite_all(self._direct_fd, stage[:whole], at)
            self._padded = self._padded or keep > 0
        self._written = (stop, bytes(stage[filled - keep : filled]))

    def _end_direct(self) -> None:
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
        self._direct_fd = -1
        self._direct = False

    def _leave(self) -> None:
        """Stop appending to the open pack: its padding is cut off and its direct handle closed."""
        if self.active is not None and self._padded:
            fd = self._fds[self.active]
            os.ftruncate(fd, self.end)
            os.fsync(fd)
        self._padded = False
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1
        self.active = None

    # -- reading and scanning ------------------------------------------------------------

    def read(self, place: Place) -> bytes:
        """The blob at `place`, or ChunkCorrupted if the record does not check out."""
        try:
            data = self.record_bytes(place)
        except OSError as err:
            raise ChunkCorrupted(place.chunk_id, f"unreadable: {err}") from err
        return parse_record(place, data)

    def read_many(self, places: Sequence[Place]) -> list[bytes | ChunkCorrupted]:
        """The blob at each place, or the ChunkCorrupted its record raises, in order.

        Records are read in file order, neighbours of one pack with one system call, so
        a batch of chunks stored together costs a few large reads, not one per chunk.
        """
        found: list[bytes | ChunkCorrupted] = [ChunkCorrupted(b"", "")] * len(places)
        order = sorted(range(len(places)), key=lambda i: (places[i].pack, places[i].offset))
        run: list[int] = []
        for i in order:
            place = places[i]
            if run:
                first, last = places[run[0]], places[run[-1]]
                near = place.pack == last.pack and place.offset - _end(last) <= READ_GAP
                if not near or _end(place) - first.offset > READ_SPAN:
                    self._read_run(places, run, found)
                    run = []
            run.append(i)
        if run:
            self._read_run(places, run, found)
        return found

    def _read_run(
        self, places: Sequence[Place], run: list[int], found: list[bytes | ChunkCorrupted]
    ) -> None:
        """Read records of one pack, in file order, with one call (records never overlap)."""
        start, end = places[run[0]].offset, _end(places[run[-1]])
        try:
            span = self._read_span(places[run[0]].pack, start, end)
        except OSError as err:
            for i in run:
                found[i] = ChunkCorrupted(places[i].chunk_id, f"unreadable: {err}")
            return
        for i in run:
            place = places[i]
            at = place.offset - start
            try:
                found[i] = parse_record(place, span[at : at + RECORD.size + place.length])
            except ChunkCorrupted as err:
                found[i] = err

    def _read_span(self, pack: int, start: int, end: int) -> memoryview:
        """Bytes `start`..`end` of `pack`: read directly into the reused buffer if possible.

        Valid until the next call. A direct read fills no page of cache, as a direct
        write does not; where the file system refuses it, the read goes through the cache.
        """
        if self._direct and end - start <= READ_SPAN:
            if self._read_buffer is None:
                self._read_buffer = memoryview(mmap.mmap(-1, READ_SPAN + 2 * ALIGN))
            fd = self._direct_reads.get(pack)
            try:
                if fd is None:
                    fd = os.open(self.path(pack), os.O_RDONLY | os.O_DIRECT)
                    self._direct_reads[pack] = fd
                    while len(self._direct_reads) > _OPEN_PACKS:
                        os.close(self._direct_reads.pop(next(iter(self._direct_reads))))
                self._direct_reads.move_to_end(pack)
                first = start - start % ALIGN
                stop = end + -end % ALIGN
                got = os.preadv(fd, [self._read_buffer[: stop - first]], first)
                return self._read_buffer[start - first : max(start, min(end, first + got)) - first]
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self._end_direct()
        return memoryview(os.pread(self.fd(pack), end - start, start))

    def record_bytes(self, place: Place) -> bytes:
        """The raw bytes of the record at `place`, unchecked."""
        return os.pread(self.fd(place.pack), RECORD.size + place.length, place.offset)

    def inspect(self, pack: int) -> tuple[int, bool]:
        """Open `pack` for writing; its size and whether it starts with PACK_MAGIC."""
        fd = self.fd(pack, writable=True)
        size = os.fstat(fd).st_size
        return size, os.pread(fd, len(PACK_MAGIC), 0) == PACK_MAGIC

    def is_padding(self, pack: int, start: int, end: int) -> bool:
        """Whether `start`..`end` of `pack` is a direct write's padding: fewer than ALIGN zeros."""
        return 0 < end - start < ALIGN and not any(os.pread(self.fd(pack), end - start, start))

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
        if pack == self.active:
            self._padded = False
            self._leave()
        reader = self._direct_reads.pop(pack, None)
        if reader is not None:
            os.close(reader)
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
        self._leave()
        for fd in [*self._fds.values(), *self._direct_reads.values()]:
            os.close(fd)
        self._fds.clear()
        self._direct_reads.clear()

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


def _end(place: Place) -> int:
    """The offset just past the record at `place`."""
    return place.offset + RECORD.size + place.length


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of `data` at `offset`."""
    while data:
        written = os.pwrite(fd, data, offset)
        if written <= 0:
            raise OSError(errno.EIO, "a pack write made no progress")
        data, offset = data[written:], offset + written


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
