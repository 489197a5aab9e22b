"""Batch reads from a chunk store: in request order, neighbours read together, damage isolated."""

import os
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.chunk_store import ChunkStore
from nodes.packs import ALIGN, RECORD
from tests.nodes.page_cache import cached_bytes

ITEMS = 60


def chunk(n: int) -> tuple[bytes, bytes]:
    blob = (n.to_bytes(4, "big") * 2000)[: 3000 + 37 * n]
    return blake3.blake3(blob).digest(), blob


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reads") / "chunks"
    with ChunkStore(folder, pack_limit=64 * 1024) as store:
        store.put_many([chunk(n) for n in range(ITEMS)])
    return folder


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, ITEMS + 9), max_size=40))
def test_get_many_answers_each_id_in_the_order_asked(filled: Path, picks: list[int]) -> None:
    ids = [chunk(n)[0] for n in picks]
    with ChunkStore(filled, pack_limit=64 * 1024) as store:
        found = store.get_many(ids)

    assert found == [chunk(n)[1] if n < ITEMS else None for n in picks]


def test_neighbouring_records_are_read_with_one_call(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real_pread, real_preadv = os.pread, os.preadv

    def pread(fd: int, length: int, offset: int) -> bytes:
        reads.append(offset)
        return real_pread(fd, length, offset)

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        reads.append(offset)
        return real_preadv(fd, buffers, offset)

    with ChunkStore(filled, pack_limit=64 * 1024) as store:
        packs = store.stats().packs
        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr(os, "preadv", preadv)
        found = store.get_many([chunk(n)[0] for n in reversed(range(ITEMS))])
        monkeypatch.undo()

    assert found == [chunk(n)[1] for n in reversed(range(ITEMS))]
    assert len(reads) == packs < ITEMS


def test_a_damaged_record_in_a_run_is_quarantined_alone(tmp_path: Path) -> None:
    folder = tmp_path / "chunks"
    items = [chunk(n) for n in range(5)]
    with ChunkStore(folder) as store:
        store.put_many(items)
    pack = next((folder / "packs").glob("*.pack"))
    damaged = 8 + RECORD.size * 2 + len(items[0][1]) + len(items[1][1]) + RECORD.size + 100
    with pack.open("r+b") as f:
        f.seek(damaged)
        byte = f.read(1)
        f.seek(damaged)
        f.write(bytes([byte[0] ^ 1]))

    with ChunkStore(folder) as store:
        found = store.get_many([cid for cid, _ in items])
        again = store.get_many([items[2][0]])

    assert found == [items[0][1], items[1][1], None, items[3][1], items[4][1]]
    assert again == [None]
    assert len(list((folder / "quarantine").glob("*.bad"))) == 1


def test_batch_reads_leave_no_pages_in_the_page_cache(tmp_path: Path) -> None:
    items = [(blake3.blake3(b).digest(), b) for b in (os.urandom(65536) for _ in range(128))]
    with ChunkStore(tmp_path / "chunks") as store:
        store.put_many(items)
        pack = next((tmp_path / "chunks" / "packs").glob("*.pack"))
        fd = os.open(pack, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        found = store.get_many([cid for cid, _ in items])
        cached = cached_bytes(pack)

    assert found == [blob for _, blob in items]
    assert cached <= ALIGN
