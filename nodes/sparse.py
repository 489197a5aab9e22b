"""Sparse-file primitives: punch holes, write zeros, map holes and data, read only the data."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

from nodes.blockdev import STATE_HOLE, STATE_ZERO, Extent

_FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def zero_range(fd: int, offset: int, length: int, chunk: int) -> None:
    """Punch holes over whole chunks, write zeros over the partial ends."""
    end = offset + length
    start_full = -(-offset // chunk) * chunk
    end_full = end // chunk * chunk
    if start_full < end_full:
        if not _punch(fd, start_full, end_full - start_full):
            _write_zeros(fd, start_full, end_full - start_full)
        _write_zeros(fd, offset, start_full - offset)
        _write_zeros(fd, end_full, end - end_full)
    else:
        _write_zeros(fd, offset, length)


def _write_zeros(fd: int, offset: int, length: int) -> None:
    step = 1 << 20
    while length > 0:
        n = min(step, length)
        os.pwrite(fd, bytes(n), offset)
        offset, length = offset + n, length - n


def _punch(fd: int, offset: int, length: int) -> bool:
    result = _libc().fallocate(
        fd, _FALLOC_PUNCH, ctypes.c_longlong(offset), ctypes.c_longlong(length)
    )
    return bool(result == 0)


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, found once per process: finding it runs ``ldconfig -p``."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def extents(fd: int, offset: int, length: int) -> list[Extent]:
    """Holes and data of a sparse file, via SEEK_DATA/SEEK_HOLE."""
    end = offset + length
    out: list[Extent] = []
    position = offset
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:
            data = end
        if data > position:
            hole_end = min(data, end)
            out.append(Extent(hole_end - position, STATE_HOLE | STATE_ZERO))
            position = hole_end
            continue
        hole = min(os.lseek(fd, position, os.SEEK_HOLE), end)
        out.append(Extent(hole - position, 0))
        position = hole
    return out


def read_data(fd: int, offset: int, length: int) -> bytes | None:
    """`length` bytes at `offset`, reading only the data extents; None when all is hole.

    Holes are zeros that are not read: reading a hole makes the kernel allocate and
    clear page-cache pages, which costs more than the read of the data around it.
    Bytes past the end of the file read as zeros.
    """
    found = [(position, extent.length) for position, extent in _placed(fd, offset, length)]
    if not found:
        return None
    if found == [(offset, length)]:
        data = os.pread(fd, length, offset)
        return data if len(data) == length else data + bytes(length - len(data))
    out = bytearray(length)
    view = memoryview(out)
    for position, size in found:
        os.preadv(fd, [view[position - offset : position - offset + size]], position)
    return bytes(out)


def _placed(fd: int, offset: int, length: int) -> list[tuple[int, Extent]]:
    """The data extents of a range, each with its position."""
    placed: list[tuple[int, Extent]] = []
    position = offset
    for extent in extents(fd, offset, length):
        if not extent.flags & STATE_HOLE:
            placed.append((position, extent))
        position += extent.length
    return placed


def read_chunks(fd: int, indexes: list[int], chunk: int, size: int) -> dict[int, bytes]:
    """Chunks `indexes` of a file of `size` bytes cut in `chunk`-byte chunks, by index.

    One `read_data` per run of neighbouring chunks; the chunks of a run that is all hole
    are ``b""``.
    """
    found: dict[int, bytes] = {}
    for run in _runs(indexes):
        start = run[0] * chunk
        end = min((run[-1] + 1) * chunk, size)
        data = read_data(fd, start, end - start)
        if data is None:
            found.update((i, b"") for i in run)
            continue
        for i in run:
            offset = i * chunk - start
            found[i] = data[offset : offset + chunk]
    return found


def _runs(indexes: list[int]) -> list[list[int]]:
    """Sorted, distinct `indexes` cut into runs of consecutive ones."""
    runs: list[list[int]] = []
    for idx in sorted(set(indexes)):
        if runs and runs[-1][-1] == idx - 1:
            runs[-1].append(idx)
        else:
            runs.append([idx])
    return runs
