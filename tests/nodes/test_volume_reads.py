"""Reading volumes from a process that does not write them (the business node's view server)."""

import contextlib
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.errors import InputError
from nodes.errors import VolumeError
from nodes.view_server import Readers
from nodes.volume import Volume
from nodes.volume_names import VolumeNotFound
from nodes.volume_reads import VolumeReader
from tests.nodes.volume_writer import frozen_view

ROOT = Path(__file__).resolve().parents[2]
KiB, MiB = 1 << 10, 1 << 20
CHUNK = 64 * KiB


def pattern(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def create(folder: Path, size: int) -> Volume:
    """A volume of 64 KiB chunks, every chunk written but the last, which stays zero."""
    volume = Volume.create(folder, size, CHUNK)
    for idx in range(volume.chunks - 1):
        volume.write_live(idx * CHUNK, pattern(idx, CHUNK))
    return volume


def as_read(chunks: list[bytes]) -> list[bytes]:
    """What a batch read answers: all-zero chunks as empty bytes."""
    return [b"" if chunk == bytes(len(chunk)) else chunk for chunk in chunks]


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    volume = create(tmp_path / "volumes" / "vm" / "root", 4 * MiB)
    try:
        yield volume
    finally:
        volume.close()


@pytest.fixture
def reader(volume: Volume) -> Iterator[VolumeReader]:
    opened = VolumeReader(volume.folder)
    try:
        yield opened
    finally:
        opened.close()


def test_a_reader_in_another_process_reads_the_frozen_view_while_it_is_rewritten(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "racing"
    volume = create(folder, 8 * MiB)
    frozen = as_read([volume.read_live(i * CHUNK, CHUNK) for i in range(volume.chunks)])
    volume.close()
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.nodes.volume_writer", "frozen", str(folder), "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, writer.kill)
    watchdog.start()
    reader: VolumeReader | None = None
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "frozen"
        reader = VolumeReader(folder)
        view = reader.view(frozen_view(5))
        preserved_before = (folder / "cow.data").stat().st_size
        rng = random.Random(7)
        for _ in range(60):
            start = rng.randrange(reader.chunks - 16)
            assert view.read_chunks(list(range(start, start + 16))) == frozen[start : start + 16]
        assert view.read_chunks(list(range(reader.chunks))) == frozen
        preserved_after = (folder / "cow.data").stat().st_size
        assert writer.poll() is None, "the writer was still writing"
        assert preserved_after > preserved_before, "chunks were rewritten while they were read"
    finally:
        writer.kill()
        writer.communicate()
        watchdog.cancel()
        if reader is not None:
            reader.close()


def test_views_frozen_after_the_reader_opened_are_read_as_frozen(
    volume: Volume, reader: VolumeReader
) -> None:
    before = as_read([volume.read_live(i * CHUNK, CHUNK) for i in range(volume.chunks)])
    volume.freeze("later")
    volume.write_live(0, pattern(99, 3 * CHUNK))
    volume.zero_live(5 * CHUNK, CHUNK)
    assert reader.view("later").read_chunks(list(range(reader.chunks))) == before
    assert reader.read_live_chunks([0, 5]) == [pattern(99, 3 * CHUNK)[:CHUNK], b""]
    with pytest.raises(VolumeError, match="no view 'other'"):
        reader.view("other")


def test_a_view_released_while_it_is_read_is_refused_not_answered(
    volume: Volume, reader: VolumeReader
) -> None:
    volume.freeze("gone")
    view = reader.view("gone")
    volume.write_live(0, pattern(50, CHUNK))
    volume.release("gone")
    with pytest.raises(VolumeError, match="released while it was read"):
        view.read_chunks([0, 1])


def test_the_reader_never_writes_the_metadata(volume: Volume, reader: VolumeReader) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._db.execute("DELETE FROM views")


def test_readers_find_volumes_by_name_and_reopen_a_volume_made_again(tmp_path: Path) -> None:
    folder = tmp_path / "volumes" / "vm" / "root"
    create(folder, 4 * MiB).close()
    readers = Readers(tmp_path / "volumes")
    try:
        name, first = readers.find({"vm": "vm", "resource_id": "root"})
        assert name == "vm/root"
        assert readers.find({"vm": "vm", "resource_id": "root"})[1] is first
        with pytest.raises(VolumeNotFound):
            readers.find({"vm": "vm", "resource_id": "data"})
        with pytest.raises(InputError):
            readers.find({"vm": "..", "resource_id": "root"})

        shutil.rmtree(folder)
        with pytest.raises(VolumeNotFound):
            readers.find({"vm": "vm", "resource_id": "root"})
        again = Volume.create(folder, 2 * MiB, CHUNK)
        again.write_live(0, pattern(7, CHUNK))
        again.close()
        _name, second = readers.find({"vm": "vm", "resource_id": "root"})
        assert second is not first
        assert second.size == 2 * MiB
        assert second.read_live_chunks([0]) == [pattern(7, CHUNK)]
    finally:
        readers.close()


def test_readers_close_the_files_of_a_deleted_volume(tmp_path: Path) -> None:
    kept, deleted = tmp_path / "volumes" / "vm" / "root", tmp_path / "volumes" / "vm" / "data"
    create(kept, MiB).close()
    create(deleted, MiB).close()
    readers = Readers(tmp_path / "volumes")
    try:
        readers.find({"vm": "vm", "resource_id": "root"})
        readers.find({"vm": "vm", "resource_id": "data"})
        held = open_files_under(kept)
        assert held > 0
        assert open_files_under(deleted) == held
        assert readers.prune() == 0
        shutil.rmtree(deleted)
        assert open_files_under(deleted) == held
        assert readers.prune() == 1
        assert open_files_under(deleted) == 0, "the deleted volume's space is freed"
        assert open_files_under(kept) == held
    finally:
        readers.close()


def open_files_under(folder: Path) -> int:
    """This process's open files in `folder` (data, preserved chunks, metadata), deleted too."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if str(fd.readlink()).startswith(str(folder) + "/"):
                count += 1
    return count
