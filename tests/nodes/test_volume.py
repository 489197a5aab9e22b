import asyncio
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nodes.blockdev import STATE_HOLE, STATE_ZERO, Extent
from nodes.errors import VolumeError
from nodes.volume import BLOCK, DEFAULT_CHUNK, ViewInfo, Volume
from tests.nodes.volume_writer import CHUNK, ITERATIONS, frozen_view, record

ROOT = Path(__file__).resolve().parents[2]
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
HOLE = STATE_HOLE | STATE_ZERO


def pattern(seed: int, length: int) -> bytes:
    """Reproducible, incompressible bytes, distinct for every seed."""
    return random.Random(seed).randbytes(length)


def allocated(path: Path) -> int:
    """Bytes the filesystem really holds for a file."""
    return path.stat().st_blocks * 512


def cow_size(volume: Volume) -> int:
    return (volume.folder / "cow.data").stat().st_size


@contextmanager
def created(folder: Path, size: int, chunk_size: int = DEFAULT_CHUNK) -> Iterator[Volume]:
    volume = Volume.create(folder, size, chunk_size)
    try:
        yield volume
    finally:
        volume.close()


@contextmanager
def opened(folder: Path) -> Iterator[Volume]:
    volume = Volume.open(folder)
    try:
        yield volume
    finally:
        volume.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "volume"


@pytest.fixture
def volume(folder: Path) -> Iterator[Volume]:
    """A 1 MiB volume of sixteen 64 KiB chunks."""
    with created(folder, MiB, 64 * KiB) as fresh:
        yield fresh


def write_chunks(volume: Volume, indexes: set[int] | list[int], seed: int = 0) -> None:
    for idx in indexes:
        volume.write_live(idx * volume.chunk_size, pattern(seed + idx, volume.chunk_size))


# -- geometry ----------------------------------------------------------------------


def test_a_new_volume_is_a_sparse_file_of_its_full_size_reading_as_zeros(tmp_path: Path) -> None:
    with created(tmp_path / "big", GiB) as volume:
        data = tmp_path / "big" / "data.raw"

        assert volume.size == GiB
        assert volume.chunks == GiB // DEFAULT_CHUNK
        assert data.stat().st_size == GiB
        assert allocated(data) <= 64 * KiB
        assert volume.read_live(0, 4096) == bytes(4096)
        assert volume.read_live(GiB - 100, 100) == bytes(100)
        assert asyncio.run(volume.read(512 * MiB + 3, 70_000)) == bytes(70_000)
        assert volume.dirty_chunks() == []
        assert volume.views() == []


def test_unwritten_ranges_around_a_write_read_as_zeros(volume: Volume) -> None:
    volume.write_live(100_000, b"x" * 5000)

    assert volume.read_live(0, 100_000) == bytes(100_000)
    assert volume.read_live(100_000, 5000) == b"x" * 5000
    assert volume.read_live(105_000, MiB - 105_000) == bytes(MiB - 105_000)


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(0, 4096), (-4096, 4096), (MiB, 0), (MiB, -4096), (MiB, 3000), (MiB, 4096 + 512)],
)
def test_invalid_geometry_is_refused_and_creates_nothing(
    folder: Path, size: int, chunk_size: int
) -> None:
    with pytest.raises(VolumeError, match="invalid volume geometry"):
        Volume.create(folder, size, chunk_size)

    assert not folder.exists()


def test_opening_a_folder_without_a_volume_raises_volume_error(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no volume"):
        Volume.open(tmp_path)


@pytest.mark.parametrize(
    ("offset", "length"),
    [(MiB - 10, 20), (MiB, 1), (-1, 1), (-4096, 8192), (0, MiB + 1), (3 * MiB, 4096)],
)
def test_a_write_or_zero_outside_the_volume_is_refused_and_changes_nothing(
    volume: Volume, offset: int, length: int
) -> None:
    write_chunks(volume, [0, 15])
    volume.freeze("before")
    before, data = volume.read_live(0, MiB), volume.folder / "data.raw"
    cow, dirty = cow_size(volume), volume.dirty_chunks()

    with pytest.raises(VolumeError, match="outside the volume"):
        volume.write_live(offset, b"\xff" * length)
    with pytest.raises(VolumeError, match="outside the volume"):
        volume.zero_live(offset, length)
    with pytest.raises(VolumeError, match="outside the volume"):
        asyncio.run(volume.write(offset, b"\xff" * length))

    assert volume.read_live(0, MiB) == before
    assert volume.view("before").read_range(0, MiB) == before
    assert data.stat().st_size == MiB
    assert cow_size(volume) == cow
    assert volume.dirty_chunks() == dirty


def test_reopening_keeps_size_chunk_size_contents_and_dirty_set(folder: Path) -> None:
    size = 3 * MiB + 5000
    writes = {0: pattern(1, 300), 70_000: pattern(2, 40_000), size - 777: pattern(3, 777)}
    with created(folder, size, 16 * KiB) as volume:
        for offset, data in writes.items():
            volume.write_live(offset, data)
        dirty = volume.dirty_chunks()

    with opened(folder) as volume:
        assert (volume.size, volume.chunk_size, volume.chunks) == (size, 16 * KiB, 193)
        for offset, data in writes.items():
            assert volume.read_live(offset, len(data)) == data
        assert volume.read_live(300, 69_700) == bytes(69_700)
        assert volume.dirty_chunks() == dirty == [0, 4, 5, 6, 192]
        assert (folder / "data.raw").stat().st_size == size


def test_a_write_with_fua_and_a_flush_leave_the_data_readable(volume: Volume) -> None:
    async def write_and_flush() -> None:
        await volume.write(4096, b"durable", fua=True)
        await volume.write(8192, b"flushed")
        await volume.flush()

    asyncio.run(write_and_flush())

    assert volume.read_live(4096, 7) == b"durable"
    assert volume.read_live(8192, 7) == b"flushed"


# -- frozen views ------------------------------------------------------------------


def test_freeze_returns_the_view_and_the_generation_it_froze(volume: Volume) -> None:
    first = volume.freeze("first")
    second = volume.freeze("second")

    assert first == ViewInfo("first", 1)
    assert second == ViewInfo("second", 2)
    assert volume.views() == [first, second]
    assert volume.view("second").generation == 2
    assert volume.view("first").read_only is True
    assert volume.view("first").size == volume.size


def test_freezing_a_64_gib_volume_copies_no_data(tmp_path: Path) -> None:
    folder = tmp_path / "large"
    with created(folder, 64 * GiB) as volume:
        written = [0, 1, 500_000, volume.chunks - 1]
        write_chunks(volume, written)

        info = volume.freeze("snap")

        assert info == ViewInfo("snap", 1)
        assert cow_size(volume) == 0
        assert allocated(folder / "data.raw") < 2 * MiB
        assert list(volume.changed_chunks("snap", since=0)) == written
        assert volume.view("snap").read_chunk(500_000) == pattern(500_000, DEFAULT_CHUNK)


def test_a_view_keeps_reading_the_frozen_contents_while_writes_go_on(volume: Volume) -> None:
    old = pattern(1, MiB)
    volume.write_live(0, old)
    view = volume.view(volume.freeze("snap").name)
    new = pattern(2, 300_000)

    volume.write_live(123_457, new)
    asyncio.run(volume.write(700_001, b"tail" * 1000))

    live = bytearray(old)
    live[123_457 : 123_457 + len(new)] = new
    live[700_001:704_001] = b"tail" * 1000
    assert volume.read_live(0, MiB) == bytes(live)
    assert view.read_range(0, MiB) == old
    for idx in range(volume.chunks):
        assert view.read_chunk(idx) == old[idx * 64 * KiB : (idx + 1) * 64 * KiB]
    for offset, length in [(1, 1), (65_535, 2), (123_000, 400_000), (700_000, 10), (MiB - 3, 3)]:
        assert view.read_range(offset, length) == old[offset : offset + length]
        assert asyncio.run(view.read(offset, length)) == old[offset : offset + length]


def test_a_chunk_never_written_before_the_freeze_reads_as_zeros_in_the_view(
    volume: Volume,
) -> None:
    write_chunks(volume, [0])
    volume.freeze("snap")

    write_chunks(volume, [3], seed=7)
    volume.write_live(5 * 64 * KiB + 10, b"partial")

    view = volume.view("snap")
    assert view.read_chunk(3) == bytes(64 * KiB)
    assert view.read_chunk(5) == bytes(64 * KiB)
    assert view.read_range(3 * 64 * KiB - 5, 3 * 64 * KiB) == bytes(3 * 64 * KiB)
    assert volume.read_live(3 * 64 * KiB, 64 * KiB) == pattern(10, 64 * KiB)


def test_chunks_read_in_one_batch_equal_the_view_with_zero_chunks_empty(volume: Volume) -> None:
    write_chunks(volume, [0, 1, 2, 4, 5, 6])
    volume.zero_live(2 * 64 * KiB, 64 * KiB)
    volume.write_live(6 * 64 * KiB, bytes(64 * KiB))
    volume.freeze("snap")
    write_chunks(volume, [1, 3, 9], seed=50)
    volume.zero_live(4 * 64 * KiB, 64 * KiB)
    view = volume.view("snap")
    wanted = [9, 0, 1, 2, 3, 4, 5, 6, 7, 15]

    batch = view.read_chunks(wanted)

    singly = [view.read_chunk(i) for i in wanted]
    assert batch == [b"" if chunk == bytes(64 * KiB) else chunk for chunk in singly]
    assert [i for i, chunk in zip(wanted, batch, strict=True) if chunk] == [0, 1, 4, 5]
    assert batch[2] == pattern(1, 64 * KiB) and batch[5] == pattern(4, 64 * KiB)


def test_live_chunks_read_in_one_batch_equal_the_disk_with_zero_chunks_empty(
    volume: Volume,
) -> None:
    write_chunks(volume, [0, 1, 2, 5])
    volume.zero_live(2 * 64 * KiB, 64 * KiB)
    volume.write_live(9 * 64 * KiB + 4 * KiB, b"x" * 4 * KiB)
    wanted = [9, 0, 1, 2, 3, 5, 15]

    batch = volume.read_live_chunks(wanted)

    singly = [volume.read_live(i * 64 * KiB, 64 * KiB) for i in wanted]
    assert batch == [b"" if chunk == bytes(64 * KiB) else chunk for chunk in singly]
    assert [i for i, chunk in zip(wanted, batch, strict=True) if chunk] == [9, 0, 1, 5]
    with pytest.raises(VolumeError):
        volume.read_live_chunks([16])


def test_batch_view_reads_racing_the_vms_first_writes_still_read_the_frozen_contents(
    tmp_path: Path,
) -> None:
    with created(tmp_path / "racing", 16 * MiB, 64 * KiB) as racing:
        write_chunks(racing, range(racing.chunks))
        racing.freeze("snap")
        frozen = [pattern(i, 64 * KiB) for i in range(racing.chunks)]
        order = list(range(racing.chunks))
        random.Random(3).shuffle(order)
        writer = threading.Thread(target=write_chunks, args=(racing, order, 1000))
        view = racing.view("snap")

        writer.start()
        starts = [0, 64, 128, 192] * 8
        seen = [view.read_chunks(list(range(start, start + 64))) for start in starts]
        writer.join()

        for start, batch in zip(starts, seen, strict=True):
            assert batch == frozen[start : start + 64]


def test_zeroing_and_trimming_after_a_freeze_is_preserved_in_the_view(volume: Volume) -> None:
    old = pattern(3, MiB)
    volume.write_live(0, old)
    volume.freeze("snap")

    volume.zero_live(64 * KiB, 3 * 64 * KiB)
    volume.zero_live(500_000, 1000)
    asyncio.run(volume.trim(10 * 64 * KiB, 64 * KiB))
    asyncio.run(volume.write_zeroes(12 * 64 * KiB - 7, 64 * KiB + 14, may_trim=False))

    assert volume.view("snap").read_range(0, MiB) == old
    assert volume.read_live(64 * KiB, 3 * 64 * KiB) == bytes(3 * 64 * KiB)
    assert volume.read_live(500_000, 1000) == bytes(1000)
    assert volume.read_live(10 * 64 * KiB, 64 * KiB) == bytes(64 * KiB)
    assert volume.read_live(12 * 64 * KiB - 7, 64 * KiB + 14) == bytes(64 * KiB + 14)
    assert volume.read_live(0, 64 * KiB) == old[: 64 * KiB]


def test_only_the_chunks_overwritten_after_a_freeze_are_copied_once(volume: Volume) -> None:
    write_chunks(volume, range(16))
    volume.freeze("snap")

    write_chunks(volume, [4], seed=100)
    volume.write_live(4 * 64 * KiB + 9, b"again")
    volume.write_live(7 * 64 * KiB + 1, b"once")

    assert cow_size(volume) == 2 * 64 * KiB


def test_views_refuse_writes_trims_and_zeroes(volume: Volume) -> None:
    volume.freeze("snap")
    view = volume.view("snap")

    with pytest.raises(VolumeError, match="read-only"):
        asyncio.run(view.write(0, b"no"))
    with pytest.raises(VolumeError, match="read-only"):
        asyncio.run(view.trim(0, 64 * KiB))
    with pytest.raises(VolumeError, match="read-only"):
        asyncio.run(view.write_zeroes(0, 64 * KiB))

    assert view.read_only is True
    assert volume.read_live(0, 2) == bytes(2)
    assert volume.dirty_chunks() == []


def test_releasing_the_last_view_drops_the_preserved_data(volume: Volume) -> None:
    write_chunks(volume, range(8))
    volume.freeze("old")
    write_chunks(volume, [0, 1], seed=50)
    volume.freeze("new")
    write_chunks(volume, [1, 2], seed=60)
    assert cow_size(volume) == 4 * 64 * KiB

    volume.release("old")

    assert volume.views() == [ViewInfo("new", 2)]
    assert volume.view("new").read_chunk(1) == pattern(51, 64 * KiB)
    assert volume.view("new").read_chunk(2) == pattern(2, 64 * KiB)
    assert cow_size(volume) > 0

    volume.release("new")

    assert volume.views() == []
    assert cow_size(volume) == 0
    with pytest.raises(VolumeError, match="no view"):
        volume.view("new")
    write_chunks(volume, [3], seed=70)
    assert cow_size(volume) == 0


def test_releasing_a_view_forgets_the_preserved_chunks_only_it_needed(volume: Volume) -> None:
    write_chunks(volume, range(4))
    volume.freeze("old")
    write_chunks(volume, [0, 1], seed=50)
    volume.freeze("new")
    write_chunks(volume, [1, 2], seed=60)

    volume.release("old")

    with closing(sqlite3.connect(volume.folder / "meta.sqlite")) as db:
        kept = db.execute("SELECT idx, gen_from, gen_to FROM preserved ORDER BY idx").fetchall()
    assert kept == [(1, 2, 2), (2, 1, 2)]


def test_a_released_view_survives_neither_reopen_nor_a_new_freeze(folder: Path) -> None:
    with created(folder, MiB, 64 * KiB) as volume:
        write_chunks(volume, [0])
        volume.freeze("snap")
        volume.release("snap")
        write_chunks(volume, [0], seed=1)

    with opened(folder) as volume:
        assert volume.views() == []
        assert cow_size(volume) == 0
        assert volume.freeze("snap") == ViewInfo("snap", 2)
        assert volume.view("snap").read_chunk(0) == pattern(1, 64 * KiB)


def test_freezing_a_name_twice_raises_volume_error(volume: Volume) -> None:
    volume.freeze("snap")

    with pytest.raises(VolumeError, match="already exists"):
        volume.freeze("snap")

    assert volume.views() == [ViewInfo("snap", 1)]
    assert volume.freeze("other") == ViewInfo("other", 2)


def test_an_unknown_view_raises_volume_error(volume: Volume) -> None:
    volume.freeze("snap")

    with pytest.raises(VolumeError, match="no view 'nope'"):
        volume.view("nope")
    with pytest.raises(VolumeError, match="no view 'nope'"):
        volume.commit_base("nope")
    with pytest.raises(VolumeError, match="no view 'nope'"):
        list(volume.changed_chunks("nope"))

    assert volume.base_generation == 0


def test_views_survive_reopen_with_their_contents(folder: Path) -> None:
    with created(folder, MiB, 64 * KiB) as volume:
        old = pattern(4, MiB)
        volume.write_live(0, old)
        volume.freeze("snap")
        volume.write_live(1000, pattern(5, 200_000))
        volume.zero_live(0, MiB // 2)
        live = volume.read_live(0, MiB)

    with opened(folder) as volume:
        assert volume.views() == [ViewInfo("snap", 1)]
        assert volume.view("snap").read_range(0, MiB) == old
        assert volume.read_live(0, MiB) == live
        volume.write_live(0, pattern(6, MiB))
        assert volume.view("snap").read_range(0, MiB) == old


# -- dirty tracking ----------------------------------------------------------------


def test_changed_chunks_of_a_view_are_those_written_before_it_since_the_base(
    volume: Volume,
) -> None:
    write_chunks(volume, [0, 3, 7])
    volume.freeze("v1")
    write_chunks(volume, [3, 9], seed=10)

    assert list(volume.changed_chunks("v1", since=0)) == [0, 3, 7]
    assert list(volume.changed_chunks("v1")) == [0, 3, 7]
    assert volume.dirty_chunks() == [0, 3, 7, 9]


def test_rewriting_a_chunk_with_the_same_bytes_still_counts_as_changed(volume: Volume) -> None:
    write_chunks(volume, [2])
    volume.commit_base(volume.freeze("v1").name)

    write_chunks(volume, [2])
    volume.freeze("v2")

    assert list(volume.changed_chunks("v2")) == [2]
    assert volume.view("v2").read_chunk(2) == volume.view("v1").read_chunk(2)


def test_dirty_tracking_counts_from_the_last_committed_snapshot(volume: Volume) -> None:
    write_chunks(volume, [0, 3, 7])
    v1 = volume.freeze("v1")
    assert list(volume.changed_chunks("v1", since=0)) == [0, 3, 7]

    volume.commit_base("v1")
    volume.release("v1")

    assert volume.base_generation == v1.generation
    assert volume.dirty_chunks() == []
    write_chunks(volume, [3, 9], seed=20)
    assert volume.dirty_chunks() == [3, 9]
    volume.freeze("v2")
    assert list(volume.changed_chunks("v2")) == [3, 9]
    assert list(volume.changed_chunks("v2", since=0)) == [0, 3, 7, 9]


def test_a_failed_snapshot_leaves_its_chunks_in_the_next_changed_set(volume: Volume) -> None:
    write_chunks(volume, [0, 3, 7])
    volume.freeze("v1")
    volume.commit_base("v1")
    volume.release("v1")
    write_chunks(volume, [3, 9], seed=20)
    volume.freeze("v2")

    volume.release("v2")
    write_chunks(volume, [12], seed=30)
    volume.freeze("v3")

    assert list(volume.changed_chunks("v3")) == [3, 9, 12]
    assert volume.dirty_chunks() == [3, 9, 12]

    volume.commit_base("v3")

    assert list(volume.changed_chunks("v3")) == []
    assert volume.dirty_chunks() == []


def test_the_base_survives_reopen(folder: Path) -> None:
    with created(folder, MiB, 64 * KiB) as volume:
        write_chunks(volume, [1])
        volume.commit_base(volume.freeze("v1").name)
        write_chunks(volume, [2])

    with opened(folder) as volume:
        assert volume.base_generation == 1
        assert volume.dirty_chunks() == [2]
        volume.freeze("v2")
        assert list(volume.changed_chunks("v2")) == [2]


def test_a_former_base_still_counts_the_chunks_written_since_it(folder: Path) -> None:
    """A snapshot whose newer children were deleted is the next one's parent: its view,
    once the base, still tells which chunks changed since, across a reopen; the blocks
    too while it is the base before the last."""
    with created(folder, MiB, 64 * KiB) as volume:
        write_chunks(volume, [1])
        v1 = volume.freeze("v1")
        volume.commit_base("v1")
        volume.release("v1")
        volume.write_live(2 * 64 * KiB + 3 * BLOCK, b"b" * BLOCK)
        v2 = volume.freeze("v2")
        volume.commit_base("v2")
        volume.release("v2")
        volume.write_live(3 * 64 * KiB + 5 * BLOCK, b"c" * BLOCK)
        volume.freeze("v3")
        assert volume.base_generation_of("v2") == v2.generation
        assert volume.base_generation_of("v1") == v1.generation

    with opened(folder) as volume:
        assert volume.base_generation_of("v1") == v1.generation
        assert list(volume.changed_chunks("v3", volume.base_generation_of("v1"))) == [2, 3]
        assert list(volume.changed_chunks("v3")) == [3]
        assert volume.changed_blocks("v3", v1.generation) == [(2, 1 << 3), (3, 1 << 5)]
        assert volume.base_generation_of("v3") is None, "frozen, never the base"
        assert volume.base_generation_of("nope") is None

        volume.commit_base("v3")
        volume.freeze("v4")
        # v1 is two bases back: its generation's successors lost their masks, whole chunks.
        assert volume.changed_blocks("v4", v1.generation) == [(2, FULL), (3, FULL)]
        assert volume.changed_blocks("v4", v2.generation) == [(3, 1 << 5)]


def test_a_volume_remembers_its_last_bases_only(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nodes.volume.BASE_HISTORY", 3)
    for n in range(1, 6):
        write_chunks(volume, [n])
        volume.commit_base(volume.freeze(f"v{n}").name)
        volume.release(f"v{n}")

    assert [volume.base_generation_of(f"v{n}") for n in range(1, 6)] == [None, None, 3, 4, 5]


# -- block masks -----------------------------------------------------------------------

FULL = (1 << 16) - 1
"""The mask of a whole 64 KiB chunk: sixteen 4 KiB blocks."""


def bits(*blocks: int) -> int:
    return sum(1 << b for b in set(blocks))


def at(idx: int, within: int) -> int:
    """Offset of byte `within` of 64 KiB chunk `idx`."""
    return idx * 64 * KiB + within


def test_a_writes_mask_holds_the_blocks_it_touched_in_each_chunk(volume: Volume) -> None:
    volume.write_live(at(0, 0), b"x" * BLOCK)
    volume.write_live(at(1, 3 * BLOCK + 10), b"x" * 100)
    volume.write_live(at(2, 60 * KiB), b"x" * 8 * KiB)
    volume.write_live(at(4, 4000), b"x" * 5000)
    volume.write_live(at(5, 0), b"x" * 64 * KiB)
    volume.write_live(at(6, 40 * KiB), b"x" * (2 * 64 * KiB))
    volume.freeze("v1")

    assert volume.changed_blocks("v1") == [
        (0, bits(0)),
        (1, bits(3)),
        (2, bits(15)),
        (3, bits(0)),
        (4, bits(0, 1, 2)),
        (5, FULL),
        (6, bits(10, 11, 12, 13, 14, 15)),
        (7, FULL),
        (8, bits(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)),
    ]


def test_masks_gather_every_write_of_the_generation(volume: Volume) -> None:
    volume.write_live(at(0, BLOCK), b"x")
    volume.write_live(at(0, 9 * BLOCK), b"x" * 2 * BLOCK)
    volume.write_live(at(1, 0), b"x" * 64 * KiB)
    volume.write_live(at(1, 0), b"x")
    volume.write_live(at(2, 0), b"x")
    volume.write_live(at(2, 0), b"x" * 64 * KiB)
    volume.freeze("v1")

    assert volume.changed_blocks("v1") == [(0, bits(1, 9, 10)), (1, FULL), (2, FULL)]


def test_zeroing_and_trimming_mark_the_blocks_they_cover(volume: Volume) -> None:
    volume.zero_live(at(3, 2 * BLOCK), 100)
    volume.zero_live(at(4, 0), 64 * KiB)
    asyncio.run(volume.trim(at(5, 15 * BLOCK), BLOCK + 1))
    volume.freeze("v1")

    assert volume.changed_blocks("v1") == [(3, bits(2)), (4, FULL), (5, bits(15)), (6, bits(0))]


def test_the_short_last_chunk_has_only_the_blocks_it_holds(tmp_path: Path) -> None:
    size = 3 * 64 * KiB + 5000  # the last chunk: a 4 KiB block and one of 904 bytes
    with created(tmp_path / "v", size) as volume:
        volume.write_live(size - 10, b"x" * 10)
        volume.freeze("v1")
        volume.zero_live(at(3, 0), 5000)
        volume.freeze("v2")

        assert volume.changed_blocks("v1") == [(3, bits(1))]
        assert volume.changed_blocks("v2", since=1) == [(3, bits(0, 1))]


def test_a_chunk_no_larger_than_a_block_is_one_block(tmp_path: Path) -> None:
    with created(tmp_path / "v", 64 * KiB, 1024) as volume:
        volume.write_live(1000, b"x" * 100)
        volume.freeze("v1")

        assert volume.changed_blocks("v1") == [(0, 1), (1, 1)]


def test_masks_add_up_over_the_generations_after_since(volume: Volume) -> None:
    volume.write_live(at(0, 0), b"x")
    volume.freeze("v1")
    volume.write_live(at(0, 5 * BLOCK), b"x")
    volume.write_live(at(1, 2 * BLOCK), b"x")
    volume.freeze("v2")
    volume.write_live(at(0, 7 * BLOCK), b"x")
    volume.freeze("v3")

    assert volume.changed_blocks("v3", since=0) == [(0, bits(0, 5, 7)), (1, bits(2))]
    assert volume.changed_blocks("v3", since=1) == [(0, bits(5, 7)), (1, bits(2))]
    assert volume.changed_blocks("v3", since=2) == [(0, bits(7))]
    assert volume.changed_blocks("v2", since=0) == [(0, bits(0, 5)), (1, bits(2))]
    assert volume.changed_blocks("v2", since=2) == []


def test_a_chunk_rewritten_after_its_view_keeps_the_mask_of_the_views_generations(
    volume: Volume,
) -> None:
    volume.write_live(at(0, 0), b"x")
    volume.freeze("v1")
    volume.write_live(at(0, 3 * BLOCK), b"x")
    volume.freeze("v2")
    volume.write_live(at(0, 8 * BLOCK), b"x")  # the chunk now reaches v2 via `preserved`
    volume.freeze("v3")

    assert volume.changed_blocks("v2", since=1) == [(0, bits(3))]
    assert volume.changed_blocks("v3", since=1) == [(0, bits(3, 8))]


def test_changed_blocks_are_the_changed_chunks_in_the_same_order(volume: Volume) -> None:
    rng = random.Random(7)
    for round_ in range(4):
        for _ in range(30):
            offset = rng.randrange(MiB - 1)
            volume.write_live(offset, b"x" * rng.randrange(1, min(3 * BLOCK, MiB - offset)))
        volume.freeze(f"v{round_}")
    for name, since in (("v3", 0), ("v3", 2), ("v1", 0), ("v2", 1)):
        found = volume.changed_blocks(name, since=since)
        assert [idx for idx, _ in found] == volume.changed_chunks(name, since=since)
        assert all(0 < mask <= FULL for _, mask in found)


def test_sealed_masks_survive_reopen_and_the_open_generation_becomes_whole_chunks(
    folder: Path,
) -> None:
    with created(folder, MiB, 64 * KiB) as volume:
        volume.write_live(at(0, 2 * BLOCK), b"x")
        volume.freeze("v1")
        volume.write_live(at(1, 3 * BLOCK), b"x")

    with opened(folder) as volume:
        volume.write_live(at(1, 4 * BLOCK), b"x")
        volume.write_live(at(2, 5 * BLOCK), b"x")
        volume.freeze("v2")

        assert volume.changed_blocks("v1") == [(0, bits(2))]
        assert volume.changed_blocks("v2", since=1) == [(1, FULL), (2, bits(5))]


def test_masks_lost_by_a_crash_read_as_whole_chunks(folder: Path) -> None:
    with created(folder, MiB, 64 * KiB) as volume:
        volume.freeze("v1")
        volume.write_live(at(1, 3 * BLOCK), b"x")
        with opened(folder) as reopened:  # what a kill -9 and a restart leave
            reopened.write_live(at(1, 4 * BLOCK), b"x")
            reopened.freeze("v2")
            assert reopened.changed_blocks("v2", since=1) == [(1, FULL)]


def test_committing_a_base_drops_the_masks_up_to_the_previous_base_and_older_sinces_get_whole(
    folder: Path,
) -> None:
    with created(folder, MiB, 64 * KiB) as volume:
        for gen in range(1, 4):
            volume.write_live(at(0, gen * BLOCK), b"x")
            volume.freeze(f"v{gen}")

        volume.commit_base("v1")
        assert volume.changed_blocks("v3", since=0) == [(0, bits(1, 2, 3))]
        volume.commit_base("v2")

        assert volume.changed_blocks("v3") == [(0, bits(3))]
        assert volume.changed_blocks("v3", since=1) == [(0, bits(2, 3))]
        assert volume.changed_blocks("v3", since=0) == [(0, FULL)]
    with closing(sqlite3.connect(folder / "meta.sqlite")) as db:
        assert db.execute("SELECT min(gen) FROM masks").fetchone() == (2,)
    with opened(folder) as volume:
        assert volume.changed_blocks("v3", since=0) == [(0, FULL)]
        assert volume.changed_blocks("v3", since=1) == [(0, bits(2, 3))]
        assert volume.changed_blocks("v3", since=2) == [(0, bits(3))]


def test_a_volume_made_before_masks_has_whole_chunks_until_its_next_generation(
    folder: Path,
) -> None:
    with created(folder, MiB, 64 * KiB) as volume:
        volume.write_live(at(0, BLOCK), b"x")
        volume.freeze("v1")
        volume.write_live(at(1, BLOCK), b"x")
    with closing(sqlite3.connect(folder / "meta.sqlite")) as db, db:
        db.execute("DROP TABLE masks")
        db.execute("DROP TABLE mask_floor")

    with opened(folder) as volume:
        volume.write_live(at(2, BLOCK), b"x")
        volume.freeze("v2")
        volume.write_live(at(3, BLOCK), b"x")
        volume.freeze("v3")

        assert volume.changed_blocks("v3", since=0) == [(i, FULL) for i in range(4)]
        assert volume.changed_blocks("v3", since=1) == [(1, FULL), (2, bits(1)), (3, bits(1))]
        assert volume.changed_blocks("v3", since=2) == [(3, bits(1))]


SMALL_CHUNK, SMALL_SIZE = 16 * KiB, 4 * 16 * KiB + 5 * KiB
"""Chunks of four blocks; the last one holds two, the second of 1 KiB."""
OPERATIONS = st.one_of(
    st.tuples(
        st.sampled_from(["write", "zero"]), st.integers(0, SMALL_SIZE - 1), st.integers(1, 40000)
    ),
    st.tuples(st.sampled_from(["freeze", "reopen", "commit"])),
)


def written_blocks(offset: int, length: int) -> set[tuple[int, int]]:
    """(chunk, block) pairs of SMALL_CHUNK chunks a write covers."""
    per = SMALL_CHUNK // BLOCK
    return {divmod(b, per) for b in range(offset // BLOCK, (offset + length - 1) // BLOCK + 1)}


@settings(max_examples=60, deadline=None)
@given(st.lists(OPERATIONS, max_size=30))
def test_masks_are_the_blocks_written_or_whole_chunks_where_they_were_lost(
    operations: list[tuple[object, ...]],
) -> None:
    gen, floor, base, views = 1, 1, 0, []
    written: set[tuple[int, int, int]] = set()  # (generation, chunk, block)
    whole: set[tuple[int, int]] = set()  # (generation, chunk) whose masks a reopen lost
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "volume"
        volume = Volume.create(folder, SMALL_SIZE, SMALL_CHUNK)
        try:
            for kind, *place in operations:
                if kind in ("write", "zero"):
                    offset, length = place[0], min(place[1], SMALL_SIZE - place[0])
                    if kind == "write":
                        volume.write_live(offset, b"w" * length)
                    else:
                        volume.zero_live(offset, length)
                    written |= {(gen, c, b) for c, b in written_blocks(offset, length)}
                elif kind == "freeze":
                    volume.freeze(f"v{gen}")
                    views.append(gen)
                    gen += 1
                elif kind == "reopen":
                    volume.close()
                    volume = Volume.open(folder)
                    whole |= {(g, c) for g, c, _ in written if g == gen}
                elif views:
                    volume.commit_base(f"v{views[-1]}")
                    floor, base = max(floor, base + 1), views[-1]
            for view in views:
                for since in range(view):
                    touched = {(g, c, b) for g, c, b in written if since < g <= view}
                    expected = {}
                    for _, c, b in sorted(touched):
                        expected[c] = expected.get(c, 0) | 1 << b
                    for c in expected:
                        lost = any((g, c) in whole for g in range(since + 1, view + 1))
                        if lost or since + 1 < floor:
                            expected[c] = 0b11 if c == 4 else 0b1111
                    assert volume.changed_blocks(f"v{view}", since) == sorted(expected.items())
        finally:
            volume.close()


def test_changed_blocks_of_an_unknown_view_is_refused(volume: Volume) -> None:
    with pytest.raises(VolumeError):
        volume.changed_blocks("nope")


# -- allocation ----------------------------------------------------------------------


def test_block_status_reports_holes_and_data_extents_of_whole_chunks(volume: Volume) -> None:
    chunk = volume.chunk_size
    write_chunks(volume, [2, 3, 9])

    status = asyncio.run(volume.block_status(0, MiB))

    assert status == [
        Extent(2 * chunk, HOLE),
        Extent(2 * chunk, 0),
        Extent(5 * chunk, HOLE),
        Extent(chunk, 0),
        Extent(6 * chunk, HOLE),
    ]
    assert asyncio.run(volume.block_status(chunk, 2 * chunk)) == [
        Extent(chunk, HOLE),
        Extent(chunk, 0),
    ]
    assert asyncio.run(volume.block_status(15 * chunk, 10 * chunk)) == [Extent(chunk, HOLE)]


def test_block_status_covers_every_written_byte_and_its_holes_read_as_zeros(
    volume: Volume,
) -> None:
    writes = [(10, 100), (200_000, 70_000), (MiB - 1, 1)]
    for offset, length in writes:
        volume.write_live(offset, b"\x01" * length)

    status = asyncio.run(volume.block_status(0, MiB))

    assert sum(extent.length for extent in status) == MiB
    assert {extent.flags for extent in status} <= {0, HOLE}
    position, data = 0, []
    for extent in status:
        if extent.flags == HOLE:
            assert volume.read_live(position, extent.length) == bytes(extent.length)
        else:
            data.append((position, position + extent.length))
        position += extent.length
    for offset, length in writes:
        assert any(start <= offset and offset + length <= end for start, end in data)


def test_zeroing_whole_chunks_punches_holes(volume: Volume) -> None:
    chunk, data = volume.chunk_size, volume.folder / "data.raw"
    write_chunks(volume, range(8))
    volume.sync()
    before = allocated(data)

    volume.zero_live(chunk, 3 * chunk)
    asyncio.run(volume.write_zeroes(5 * chunk, chunk))

    assert allocated(data) <= before - 4 * chunk
    assert asyncio.run(volume.block_status(0, 8 * chunk)) == [
        Extent(chunk, 0),
        Extent(3 * chunk, HOLE),
        Extent(chunk, 0),
        Extent(chunk, HOLE),
        Extent(2 * chunk, 0),
    ]
    assert volume.read_live(chunk, 3 * chunk) == bytes(3 * chunk)
    assert volume.dirty_chunks() == list(range(8))


def test_zeroing_part_of_a_chunk_keeps_it_allocated_and_reads_zeros(volume: Volume) -> None:
    chunk = volume.chunk_size
    write_chunks(volume, [0, 1])

    volume.zero_live(100, chunk)

    assert volume.read_live(100, chunk) == bytes(chunk)
    assert volume.read_live(0, 100) == pattern(0, 100)
    assert asyncio.run(volume.block_status(0, 2 * chunk)) == [Extent(2 * chunk, 0)]


def test_a_view_reports_its_whole_range_as_data(volume: Volume) -> None:
    volume.freeze("snap")

    status = asyncio.run(volume.view("snap").block_status(MiB - 4096, 8192))

    assert status == [Extent(4096, 0)]


# -- crash consistency ---------------------------------------------------------------


def run_writer_until_killed(*args: str, wanted: int) -> list[str]:
    """Run the volume writer, SIGKILL it after `wanted` lines; every complete line it printed."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.nodes.volume_writer", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    watchdog = threading.Timer(60, writer.kill)
    watchdog.start()
    assert writer.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < wanted:
            line = writer.stdout.readline().decode()
            assert line, "the writer stopped early"
            lines.append(line)
        time.sleep(random.uniform(0, 0.02))
    finally:
        writer.send_signal(signal.SIGKILL)
        rest = writer.stdout.read().decode()
        writer.stdout.close()
        writer.wait()
        watchdog.cancel()
    assert writer.returncode == -signal.SIGKILL
    return lines + [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]


def test_every_synced_write_survives_kill_9(folder: Path) -> None:
    with created(folder, (ITERATIONS + 1) * CHUNK, CHUNK):
        pass

    for round_, wanted in enumerate([150, 60]):
        printed = [
            int(line)
            for line in run_writer_until_killed("synced", str(folder), str(round_), wanted=wanted)
        ]

        assert printed == list(range(len(printed)))
        with opened(folder) as volume:
            dirty = set(volume.dirty_chunks())
            for iteration in printed:
                offset, data = record(round_, iteration)
                assert volume.read_live(offset, len(data)) == data, iteration
                assert {offset // CHUNK, (offset + len(data) - 1) // CHUNK} <= dirty


def chunks_in(lines: list[str]) -> set[int]:
    """Chunks the writer's "write|zero OFFSET LENGTH" lines touched."""
    touched: set[int] = set()
    for line in lines:
        _kind, offset, length = line.split()
        first, last = int(offset) // CHUNK, (int(offset) + int(length) - 1) // CHUNK
        touched.update(range(first, last + 1))
    return touched


def test_views_frozen_before_kill_9_read_what_they_froze_and_dirty_covers_every_write(
    folder: Path,
) -> None:
    chunks = 2048  # enough that most writes still touch a chunk first in the generation
    size, prefilled = chunks * CHUNK, [idx for idx in range(chunks) if idx % 5]
    with created(folder, size, CHUNK) as volume:
        write_chunks(volume, prefilled)
    views: list[tuple[str, bytes]] = []
    previous: set[int] = set()

    for seed in (1, 2, 3):
        with opened(folder) as volume:
            views.append((frozen_view(seed), volume.read_live(0, size)))

        lines = run_writer_until_killed("frozen", str(folder), str(seed), wanted=300)

        assert lines[0] == "frozen\n"
        with opened(folder) as volume:
            assert volume.views() == [ViewInfo(name, gen) for gen, (name, _) in enumerate(views, 1)]
            assert volume.base_generation == seed
            for name, contents in views:
                assert volume.view(name).read_range(0, size) == contents, name
            dirty = set(volume.dirty_chunks())
            assert chunks_in(lines[1:]) <= dirty
            live, frozen = volume.read_live(0, size), views[-1][1]
            differing = {
                idx
                for idx in range(chunks)
                if live[idx * CHUNK : (idx + 1) * CHUNK] != frozen[idx * CHUNK : (idx + 1) * CHUNK]
            }
            assert differing <= dirty
            assert set(volume.changed_chunks(frozen_view(seed), since=seed - 1)) == (
                previous or set(prefilled)
            )
        previous = dirty

    with opened(folder) as volume:
        volume.freeze("after")
        assert set(volume.changed_chunks("after")) == previous


# -- several views against a model ---------------------------------------------------


class VolumeModel(RuleBasedStateMachine):
    """A volume of 4 KiB chunks checked against bytes for the live volume and each view.

    Every write is recorded with its generation, so the expected changed and dirty sets
    are the chunks *written* in a range of generations, whatever their contents.
    """

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="volume-model-"))
        self.volume: Volume | None = None
        self.live = bytearray()
        self.generation, self.base, self.named = 1, 0, 0
        self.views: dict[str, tuple[int, bytes]] = {}
        self.writes: set[tuple[int, int]] = set()

    @property
    def opened(self) -> Volume:
        assert self.volume is not None
        return self.volume

    def teardown(self) -> None:
        if self.volume is not None:
            self.volume.close()
        shutil.rmtree(self.root)

    @initialize(size=st.sampled_from([16 * CHUNK, 15 * CHUNK + 1536]))
    def create(self, size: int) -> None:
        self.volume = Volume.create(self.root / "volume", size, chunk_size=CHUNK)
        self.live = bytearray(size)

    def draw_range(self, data: st.DataObject) -> tuple[int, int]:
        size = len(self.live)
        boundary = st.integers(0, size // CHUNK).map(lambda k: k * CHUNK)
        offset = data.draw(st.one_of(boundary, st.integers(0, size)), label="offset")
        room = size - offset
        length = data.draw(
            st.one_of(
                st.integers(0, min(room, 3 * CHUNK + 100)),
                st.sampled_from([n for n in (CHUNK, 2 * CHUNK, room) if n <= room]),
            ),
            label="length",
        )
        return offset, length

    def record_write(self, offset: int, length: int) -> None:
        if length:
            first, last = offset // CHUNK, (offset + length - 1) // CHUNK
            self.writes.update((self.generation, idx) for idx in range(first, last + 1))

    def pick_view(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.views)), label="view")

    @rule(data=st.data(), seed=st.integers(0, 2**32 - 1), through_nbd=st.booleans())
    def write(self, data: st.DataObject, seed: int, through_nbd: bool) -> None:
        offset, length = self.draw_range(data)
        payload = pattern(seed, length)
        if through_nbd:
            asyncio.run(self.opened.write(offset, payload, fua=True))
        else:
            self.opened.write_live(offset, payload)
        self.live[offset : offset + length] = payload
        self.record_write(offset, length)

    @rule(data=st.data(), trim=st.booleans())
    def zero(self, data: st.DataObject, trim: bool) -> None:
        offset, length = self.draw_range(data)
        if trim:
            asyncio.run(self.opened.trim(offset, length))
        else:
            self.opened.zero_live(offset, length)
        self.live[offset : offset + length] = bytes(length)
        self.record_write(offset, length)

    @precondition(lambda self: len(self.views) < 6)
    @rule()
    def freeze(self) -> None:
        name = f"view-{self.named}"
        self.named += 1
        assert self.opened.freeze(name) == ViewInfo(name, self.generation)
        self.views[name] = (self.generation, bytes(self.live))
        self.generation += 1

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        name = self.pick_view(data)
        self.opened.release(name)
        del self.views[name]

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def commit_base(self, data: st.DataObject) -> None:
        name = self.pick_view(data)
        self.opened.commit_base(name)
        self.base = self.views[name][0]

    @rule()
    def reopen(self) -> None:
        self.opened.close()
        self.volume = None
        self.volume = Volume.open(self.root / "volume")

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def read_a_view_range(self, data: st.DataObject) -> None:
        name = self.pick_view(data)
        offset, length = self.draw_range(data)
        expected = self.views[name][1][offset : offset + length]
        view = self.opened.view(name)
        assert view.read_range(offset, length) == expected
        assert asyncio.run(view.read(offset, length)) == expected

    @invariant()
    def the_live_volume_matches(self) -> None:
        assert self.opened.read_live(0, len(self.live)) == self.live

    @invariant()
    def every_view_reads_what_it_froze(self) -> None:
        by_age = sorted(self.views.items(), key=lambda item: item[1][0])
        assert self.opened.views() == [ViewInfo(name, gen) for name, (gen, _) in by_age]
        for name, (_gen, contents) in self.views.items():
            assert self.opened.view(name).read_range(0, len(self.live)) == contents

    @invariant()
    def changed_and_dirty_sets_are_the_chunks_written(self) -> None:
        volume = self.opened
        assert volume.base_generation == self.base
        assert volume.dirty_chunks() == sorted({i for g, i in self.writes if g > self.base})
        for name, (gen, _) in self.views.items():
            for since in range(self.generation):
                expected = sorted({i for g, i in self.writes if since < g <= gen})
                assert list(volume.changed_chunks(name, since=since)) == expected, since
            expected = sorted({i for g, i in self.writes if self.base < g <= gen})
            assert list(volume.changed_chunks(name)) == expected

    @invariant()
    def preserved_data_is_dropped_when_no_view_remains(self) -> None:
        if not self.views:
            assert cow_size(self.opened) == 0


def test_views_live_contents_and_changed_sets_match_a_reference_model() -> None:
    run_state_machine_as_test(
        VolumeModel,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None),
    )


def test_reads_outside_the_volume_or_a_view_are_refused(volume: Volume) -> None:
    volume.freeze("s")
    view = volume.view("s")
    for offset, length in ((MiB - 100, 200), (-1, 10), (MiB, 1)):
        with pytest.raises(VolumeError):
            view.read_range(offset, length)
        with pytest.raises(VolumeError):
            volume.read_live(offset, length)


def test_creating_a_volume_where_one_exists_is_refused(volume: Volume, folder: Path) -> None:
    with pytest.raises(VolumeError, match="already exists"):
        Volume.create(folder, MiB, 64 * KiB)


def test_changed_chunks_of_an_unknown_view_is_refused_at_once(volume: Volume) -> None:
    with pytest.raises(VolumeError):
        volume.changed_chunks("nope")
