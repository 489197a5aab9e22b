import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.sparse import read_data, zero_range

SIZE = 1 << 20
BLOCK = 4096
CHUNK = 65536


def _file(path: Path, size: int = SIZE) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    return fd


def test_a_range_of_holes_reads_as_none(tmp_path: Path) -> None:
    fd = _file(tmp_path / "f")
    try:
        assert read_data(fd, 0, SIZE) is None
        assert read_data(fd, 65536, 65536) is None
    finally:
        os.close(fd)


def test_data_between_holes_reads_in_place_with_zeros_around_it(tmp_path: Path) -> None:
    fd = _file(tmp_path / "f")
    try:
        os.pwrite(fd, b"a" * BLOCK, 5 * BLOCK)
        os.pwrite(fd, b"b" * BLOCK, 9 * BLOCK)
        expected = bytearray(16 * BLOCK)
        expected[5 * BLOCK : 6 * BLOCK] = b"a" * BLOCK
        expected[9 * BLOCK : 10 * BLOCK] = b"b" * BLOCK
        assert read_data(fd, 0, 16 * BLOCK) == bytes(expected)
        assert read_data(fd, 5 * BLOCK + 100, 200) == b"a" * 200
    finally:
        os.close(fd)


def test_a_range_all_data_is_read_whole(tmp_path: Path) -> None:
    fd = _file(tmp_path / "f")
    try:
        data = os.urandom(64 * 1024)
        os.pwrite(fd, data, 128 * 1024)
        assert read_data(fd, 128 * 1024, len(data)) == data
    finally:
        os.close(fd)


def test_bytes_past_the_end_of_the_file_read_as_zeros(tmp_path: Path) -> None:
    fd = _file(tmp_path / "f", size=3 * BLOCK)
    try:
        os.pwrite(fd, b"z" * (3 * BLOCK), 0)
        assert read_data(fd, 2 * BLOCK, 2 * BLOCK) == b"z" * BLOCK + bytes(BLOCK)
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.integers(0, SIZE - 1), st.integers(1, 3 * BLOCK), st.booleans()),
        max_size=12,
    ),
    start=st.integers(0, SIZE - 1),
    length=st.integers(1, SIZE),
)
def test_reading_only_the_data_equals_reading_everything(
    tmp_path_factory, writes: list[tuple[int, int, bool]], start: int, length: int
) -> None:
    fd = _file(tmp_path_factory.mktemp("sparse") / "f")
    try:
        for offset, size, punch in writes:
            size = min(size, SIZE - offset)
            if punch:
                zero_range(fd, offset, size, BLOCK)
            else:
                os.pwrite(fd, os.urandom(size), offset)
        length = min(length, SIZE - start)
        whole = os.pread(fd, length, start)
        found = read_data(fd, start, length)
        assert (found if found is not None else bytes(length)) == whole
        if found is None:
            assert not any(whole)
    finally:
        os.close(fd)


def test_punching_holes_starts_no_process_after_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finding the C library runs `ldconfig -p`; a VM's every TRIM must not.
    fd = _file(tmp_path / "f")
    try:
        os.pwrite(fd, os.urandom(4 * CHUNK), 0)
        zero_range(fd, 0, CHUNK, CHUNK)

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("a process was started to punch a hole")

        monkeypatch.setattr(subprocess, "Popen", refuse)
        zero_range(fd, 2 * CHUNK, CHUNK, CHUNK)
        assert read_data(fd, 2 * CHUNK, CHUNK) is None
        assert read_data(fd, CHUNK, CHUNK) is not None
    finally:
        os.close(fd)
