"""Direct appends to packs: the same bytes as buffered writes, no page cache, padding recovered."""

import os
import shutil
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.chunk_store import ChunkStore
from nodes.packs import ALIGN, DEFAULT_PACK_LIMIT, PACK_MAGIC, RECORD, PackFiles, record_checksum
from tests.nodes.page_cache import cached_bytes

MiB = 1024 * 1024


def records(sizes: list[int], first: int) -> list[tuple[bytes, bytes, bytes]]:
    found = []
    for n, size in enumerate(sizes, start=first):
        blob = (n.to_bytes(4, "big") * (size // 4 + 1))[:size]
        chunk_id = blake3.blake3(blob + n.to_bytes(4, "big")).digest()
        found.append((chunk_id, blob, record_checksum(chunk_id, blob)))
    return found


def append(folder: Path, batches: list[tuple[list[int], bool]], *, direct: bool) -> list[int]:
    """Append the batches to one pack, syncing after those marked; each record's offset."""
    folder.mkdir(parents=True)
    files = PackFiles(folder, DEFAULT_PACK_LIMIT, direct=direct)
    files.activate(files.create(0), len(PACK_MAGIC))
    offsets: list[int] = []
    count = 0
    for sizes, sync in batches:
        batch = records(sizes, count)
        count += len(batch)
        _pack, at = files.write(batch)
        offsets += at
        files.advance(at[-1] + RECORD.size + len(batch[-1][1]))
        if sync:
            files.sync()
    files.sync()
    files.close()
    return offsets


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 3 * ALIGN + 7), min_size=1, max_size=12), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_direct_and_buffered_appends_write_the_same_pack(
    tmp_path_factory: pytest.TempPathFactory, batches: list[tuple[list[int], bool]]
) -> None:
    root = tmp_path_factory.mktemp("packs")
    direct = append(root / "direct", batches, direct=True)
    buffered = append(root / "buffered", batches, direct=False)

    assert direct == buffered
    assert (root / "direct" / "00000001.pack").read_bytes() == (
        root / "buffered" / "00000001.pack"
    ).read_bytes()


def test_a_batch_larger_than_the_stage_lands_whole(tmp_path: Path) -> None:
    sizes = [MiB + 13] * 9
    offsets = append(tmp_path / "direct", [(sizes, False)], direct=True)
    files = PackFiles(tmp_path / "direct", DEFAULT_PACK_LIMIT)
    data = (tmp_path / "direct" / "00000001.pack").read_bytes()

    assert len(data) == len(PACK_MAGIC) + 9 * (RECORD.size + MiB + 13)
    for (chunk_id, blob, checksum), offset in zip(records(sizes, 0), offsets, strict=True):
        assert data[offset + RECORD.size : offset + RECORD.size + len(blob)] == blob
        assert data[offset + 4 : offset + 36] == chunk_id
        assert data[offset + 40 : offset + RECORD.size] == checksum
    files.close()


def test_stored_chunks_leave_no_pages_in_the_page_cache(tmp_path: Path) -> None:
    blobs = [os.urandom(65536) for _ in range(128)]
    items = [(blake3.blake3(b).digest(), b) for b in blobs]
    with ChunkStore(tmp_path / "direct") as store:
        store.put_many(items, sync=False)
        store.sync()
        direct = cached_bytes(next((tmp_path / "direct" / "packs").glob("*.pack")))
    buffered_folder = tmp_path / "buffered"
    buffered_folder.mkdir()
    files = PackFiles(buffered_folder, DEFAULT_PACK_LIMIT, direct=False)
    files.activate(files.create(0), len(PACK_MAGIC))
    files.write([(i, b, record_checksum(i, b)) for i, b in items])
    buffered = cached_bytes(files.path(1))
    files.close()

    assert direct <= 2 * ALIGN  # the first block (the pack's magic) and the last
    assert buffered >= 8 * MiB


def test_padding_left_by_a_crash_is_cut_without_a_loss(tmp_path: Path) -> None:
    items = [(blake3.blake3(bytes([n]) * 5000).digest(), bytes([n]) * 5000) for n in range(3)]
    image = tmp_path / "crash"
    with ChunkStore(tmp_path / "chunks") as store:
        store.put_many(items, sync=False)
        shutil.copytree(tmp_path / "chunks", image)
    pack = next((image / "packs").glob("*.pack"))
    end = len(PACK_MAGIC) + 3 * (RECORD.size + 5000)
    assert pack.stat().st_size == end + (-end % ALIGN)

    with ChunkStore(image) as store:
        assert (store.recovery.reindexed, store.recovery.truncated_bytes) == (3, 0)
        assert [store.get(i) for i, _ in items] == [b for _, b in items]
    assert pack.stat().st_size == end
