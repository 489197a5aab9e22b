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
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.chunk_store import PACK_MAGIC, RECORD, ChunkStore
from nodes.errors import ChunkCorrupted, ChunkMissing, ChunkStoreError
from nodes.packs import DEFAULT_PACK_LIMIT, PackFiles, Place, record_checksum

ROOT = Path(__file__).resolve().parents[2]


def chunk(n: int, size: int = 4096) -> tuple[bytes, bytes]:
    """A deterministic (id, blob) pair, distinct for every n."""
    blob = (n.to_bytes(8, "big") * (size // 8 + 1))[:size]
    return blake3.blake3(blob).digest(), blob


def place(folder: Path, chunk_id: bytes) -> tuple[Path, int, int]:
    """Pack file, record offset and blob length of a chunk, read from the index file."""
    with sqlite3.connect(folder / "index.sqlite") as db:
        row = db.execute(
            "SELECT pack, offset, length FROM chunks WHERE id = ?", (chunk_id,)
        ).fetchone()
    db.close()
    assert row is not None
    return folder / "packs" / f"{row[0]:08d}.pack", row[1], row[2]


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def packs(folder: Path) -> list[Path]:
    return sorted((folder / "packs").glob("*.pack"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "chunks"


@pytest.fixture
def store(folder: Path) -> Iterator[ChunkStore]:
    opened = ChunkStore(folder)
    yield opened
    opened.close()


def test_put_then_get_returns_the_blob(store: ChunkStore) -> None:
    chunk_id, blob = chunk(1)

    assert store.put(chunk_id, blob) is True
    assert store.get(chunk_id) == blob


def test_missing_chunk_raises_chunk_missing(store: ChunkStore) -> None:
    with pytest.raises(ChunkMissing) as raised:
        store.get(bytes(32))

    assert raised.value.chunk_id == bytes(32)


def test_has_many_answers_in_order(store: ChunkStore) -> None:
    items = [chunk(n) for n in range(1200)]
    store.put_many(items[::2])

    assert store.has_many(cid for cid, _ in items) == [n % 2 == 0 for n in range(1200)]
    assert store.has_many([]) == []


def test_putting_a_chunk_twice_keeps_one_copy(store: ChunkStore, folder: Path) -> None:
    chunk_id, blob = chunk(1)
    assert store.put(chunk_id, blob) is True
    store.sync()
    size = packs(folder)[0].stat().st_size

    assert store.put(chunk_id, blob) is False
    assert store.put_many([(chunk_id, blob), chunk(2), chunk(2)]) == [False, True, False]
    assert packs(folder)[0].stat().st_size == size + RECORD.size + 4096
    stats = store.stats()
    assert (stats.chunks, stats.stored_bytes, stats.garbage_bytes) == (2, 8192, 0)


def test_a_full_pack_rolls_over_to_the_next(folder: Path) -> None:
    items = [chunk(n, 16384) for n in range(10)]
    with ChunkStore(folder, pack_limit=64 * 1024) as store:
        store.put_many(items)

        assert store.stats().packs == len(packs(folder)) == 4  # 3 records fit in a pack
        assert all(p.stat().st_size <= 64 * 1024 for p in packs(folder))
        assert all(store.get(cid) == blob for cid, blob in items)


def test_a_write_of_more_records_than_one_system_call_takes_lands_whole(folder: Path) -> None:
    items = [chunk(n, 40 + n % 7) for n in range(3000)]
    (folder / "packs").mkdir(parents=True)
    files = PackFiles(folder / "packs", DEFAULT_PACK_LIMIT)
    files.activate(files.create(0), len(PACK_MAGIC))
    pack, offsets = files.write([(cid, blob, record_checksum(cid, blob)) for cid, blob in items])

    for (cid, blob), offset in zip(items, offsets, strict=True):
        place = Place(cid, pack, offset, len(blob), record_checksum(cid, blob))
        assert files.read(place) == blob
    files.close()


def test_a_blob_larger_than_the_pack_limit_gets_a_pack_of_its_own(folder: Path) -> None:
    with ChunkStore(folder, pack_limit=4096) as store:
        store.put_many([chunk(1, 100), chunk(2, 10000), chunk(3, 100)])

        assert [p.stat().st_size for p in packs(folder)] == [
            len(PACK_MAGIC) + RECORD.size + 100,
            len(PACK_MAGIC) + RECORD.size + 10000,
            len(PACK_MAGIC) + RECORD.size + 100,
        ]
        assert store.get(chunk(2, 10000)[0]) == chunk(2, 10000)[1]


def test_delete_then_compact_reclaims_space_and_keeps_live_chunks(folder: Path) -> None:
    items = [chunk(n, 8192) for n in range(40)]
    dead = [cid for n, (cid, _) in enumerate(items) if n % 4 != 0]
    with ChunkStore(folder, pack_limit=64 * 1024) as store:
        store.put_many(items)
        before = sum(p.stat().st_size for p in packs(folder))

        assert store.delete_many([*dead, bytes(32), dead[0]]) == len(dead)
        assert store.stats().garbage_bytes == len(dead) * (RECORD.size + 8192)
        reclaimed = store.compact()

        after = sum(p.stat().st_size for p in packs(folder))
        assert reclaimed == before - after > len(dead) * 8192
        stats = store.stats()
        assert (stats.chunks, stats.garbage_bytes, stats.pack_bytes) == (10, 0, after)
        assert store.has_many(dead) == [False] * len(dead)
        assert all(store.get(cid) == blob for cid, blob in items[::4])
    with ChunkStore(folder, pack_limit=64 * 1024) as store:
        assert all(store.get(cid) == blob for cid, blob in items[::4])
        assert store.has_many(dead) == [False] * len(dead)


def test_compact_leaves_packs_below_the_garbage_ratio(folder: Path) -> None:
    with ChunkStore(folder, pack_limit=64 * 1024) as store:
        store.put_many(chunk(n, 8192) for n in range(7))
        store.delete_many([chunk(0, 8192)[0]])

        assert store.compact(min_garbage_ratio=0.5) == 0
        assert store.compact(min_garbage_ratio=0.1) > 0
        assert store.stats().garbage_bytes == 0


def test_flipped_byte_in_a_pack_is_found_by_scrub_and_quarantined(
    store: ChunkStore, folder: Path
) -> None:
    items = [chunk(n) for n in range(20)]
    store.put_many(items)
    bad_id = items[7][0]
    path, offset, _ = place(folder, bad_id)
    flip(path, offset + RECORD.size + 100)
    seen: list[tuple[int, int]] = []

    report = store.scrub(lambda done, total: seen.append((done, total)))

    assert report.corrupted == (bad_id,)
    assert (report.checked, report.checked_bytes) == (20, 20 * 4096)
    assert seen[-1] == (20, 20)
    assert [p.name for p in (folder / "quarantine").iterdir()] == [
        f"{bad_id.hex()}-{path.stem}-{offset}.bad"
    ]
    with pytest.raises(ChunkMissing):
        store.get(bad_id)
    assert store.scrub().corrupted == ()
    assert store.put(*items[7]) is True
    assert store.get(bad_id) == items[7][1]


def test_flipped_byte_makes_get_raise_and_a_put_repairs_it(store: ChunkStore, folder: Path) -> None:
    items = [chunk(n) for n in range(3)]
    store.put_many(items)
    path, offset, _ = place(folder, items[1][0])
    flip(path, offset + RECORD.size + 4095)

    with pytest.raises(ChunkCorrupted, match="checksum"):
        store.get(items[1][0])

    assert store.has_many([items[1][0]]) == [False]
    assert store.put(*items[1]) is True
    assert store.get(items[1][0]) == items[1][1]
    assert store.get(items[2][0]) == items[2][1]


def test_flipped_byte_in_a_record_header_is_corruption(store: ChunkStore, folder: Path) -> None:
    chunk_id, blob = chunk(1)
    store.put_many([(chunk_id, blob)])
    path, offset, _ = place(folder, chunk_id)
    flip(path, offset + 10)

    with pytest.raises(ChunkCorrupted, match="record header"):
        store.get(chunk_id)


def test_torn_pack_tail_loses_only_the_torn_chunk(folder: Path) -> None:
    items = [chunk(n) for n in range(3)]
    with ChunkStore(folder) as store:
        store.put_many(items)
    pack = packs(folder)[0]
    os.truncate(pack, pack.stat().st_size - 10)

    with ChunkStore(folder) as store:
        assert store.recovery.dropped == 1
        assert store.get(items[0][0]) == items[0][1]
        assert store.get(items[1][0]) == items[1][1]
        with pytest.raises(ChunkMissing):
            store.get(items[2][0])
        assert store.stats().chunks == 2
        assert store.put(*items[2]) is True
    with ChunkStore(folder) as store:
        assert all(store.get(cid) == blob for cid, blob in items)
        assert store.recovery.dropped == 0


def test_unsynced_puts_that_reached_the_pack_are_recovered(folder: Path, tmp_path: Path) -> None:
    items = [chunk(n) for n in range(4)]
    image = tmp_path / "crash"
    with ChunkStore(folder) as store:
        store.put_many(items[:2])
        store.put(*items[2])
        store.put(*items[3])
        shutil.copytree(folder, image)
    pack = packs(image)[0]
    os.truncate(pack, len(PACK_MAGIC) + 4 * (RECORD.size + 4096) - 100)

    with ChunkStore(image) as store:
        assert (store.recovery.reindexed, store.recovery.truncated_bytes) == (1, 4068)
        assert [store.get(cid) == blob for cid, blob in items[:3]] == [True] * 3
        assert store.has_many([items[3][0]]) == [False]
        assert store.stats().garbage_bytes == 0


def test_puts_without_sync_are_durable_at_the_next_sync_and_recovered_before_it(
    folder: Path, tmp_path: Path
) -> None:
    items = [chunk(n) for n in range(6)]
    with ChunkStore(folder) as store:
        assert store.put_many(items[:3], sync=False) == [True] * 3
        shutil.copytree(folder, tmp_path / "before")
        store.put_many(items[3:], sync=False)
        store.sync()
        shutil.copytree(folder, tmp_path / "after")

    with ChunkStore(tmp_path / "before") as store:
        assert store.recovery.reindexed == 3
        assert [store.get(cid) == blob for cid, blob in items[:3]] == [True] * 3
    with ChunkStore(tmp_path / "after") as store:
        assert store.recovery.reindexed == 0
        assert [store.get(cid) == blob for cid, blob in items] == [True] * 6


def test_a_crash_after_compaction_committed_leaves_no_trace(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [chunk(n, 8192) for n in range(16)]
    dead = [cid for cid, _ in items[1:8]]
    image = tmp_path / "crash"
    with ChunkStore(folder, pack_limit=64 * 1024) as store:
        store.put_many(items)
        store.delete_many(dead)
        real_unlink = Path.unlink

        def crash(path: Path, missing_ok: bool = False) -> None:
            if path.suffix == ".pack":
                raise OSError("simulated crash")
            real_unlink(path, missing_ok)

        monkeypatch.setattr(Path, "unlink", crash)
        with pytest.raises(ChunkStoreError, match="simulated crash"):
            store.compact()
        monkeypatch.undo()
        shutil.copytree(folder, image)
    assert len(packs(image)) == 3

    with ChunkStore(image, pack_limit=64 * 1024) as store:
        assert len(packs(image)) == 2
        assert store.has_many(dead) == [False] * len(dead)
        assert all(store.get(cid) == blob for cid, blob in [items[0], *items[8:]])
        assert store.stats().chunks == 9


def test_reopening_keeps_everything(folder: Path) -> None:
    items = [chunk(n, 1000 + n) for n in range(300)]
    with ChunkStore(folder, pack_limit=100_000) as store:
        store.put_many(items)
        stats = store.stats()
    with ChunkStore(folder, pack_limit=100_000) as store:
        assert store.stats() == stats
        assert store.recovery.dropped == store.recovery.reindexed == 0
        assert all(store.get(cid) == blob for cid, blob in items)
        assert list(store.ids()) == sorted(cid for cid, _ in items)
        store.put(*chunk(1000))
        assert store.stats().packs == stats.packs


def test_ids_pages_after_a_given_id(store: ChunkStore) -> None:
    ids = sorted(cid for cid, _ in (chunk(n, 16) for n in range(2500)))
    store.put_many(chunk(n, 16) for n in range(2500))

    assert list(store.ids()) == ids
    assert list(store.ids(after=ids[1999])) == ids[2000:]


def test_a_second_opener_is_refused(store: ChunkStore, folder: Path) -> None:
    with pytest.raises(ChunkStoreError, match="in use"):
        ChunkStore(folder)


def test_a_closed_store_refuses_calls(folder: Path) -> None:
    store = ChunkStore(folder)
    store.close()
    store.close()

    with pytest.raises(ChunkStoreError, match="closed"):
        store.get(bytes(32))


def test_threads_share_one_store(store: ChunkStore) -> None:
    errors: list[BaseException] = []

    def work(base: int) -> None:
        try:
            for n in range(base, base + 50):
                store.put_many([chunk(n)])
                assert store.get(chunk(n)[0]) == chunk(n)[1]
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert store.stats().chunks == 200


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 30), st.integers(0, 3000)),
        st.tuples(st.just("delete"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("compact"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=25, deadline=None)
@given(operations)
def test_store_behaves_like_a_dict(ops: list[tuple[str, int, int]]) -> None:
    model: dict[bytes, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ChunkStore(Path(tmp), pack_limit=8192)
        try:
            for op, n, size in ops:
                cid, blob = chunk(n, size)
                if op == "put":
                    assert store.put_many([(cid, blob)]) == [cid not in model]
                    model.setdefault(cid, blob)
                elif op == "delete":
                    assert store.delete_many([cid]) == int(cid in model)
                    model.pop(cid, None)
                elif op == "compact":
                    store.compact(min_garbage_ratio=0.0)
                    assert store.stats().garbage_bytes == 0
                else:
                    store.close()
                    store = ChunkStore(Path(tmp), pack_limit=8192)
            assert sorted(store.ids()) == sorted(model)
            assert all(store.get(cid) == blob for cid, blob in model.items())
            assert store.stats().stored_bytes == sum(map(len, model.values()))
            assert store.scrub().corrupted == ()
        finally:
            store.close()


WRITER = """
import sys
from pathlib import Path
import blake3
from nodes.chunk_store import ChunkStore

store = ChunkStore(Path(sys.argv[1]), pack_limit=256 * 1024)
n = int(sys.argv[2])
while True:
    batch = []
    for _ in range(8):
        blob = n.to_bytes(8, "big") * 1024 * (1 + n % 3)
        batch.append((blake3.blake3(blob).digest(), blob))
        n += 1
    store.put_many(batch)
    print("put", *(cid.hex() for cid, _ in batch), flush=True)
    if n % 64 == 0:
        doomed = [cid for k, (cid, _) in enumerate(batch) if k % 2]
        print("deleting", *(cid.hex() for cid in doomed), flush=True)
        store.delete_many(doomed)
        store.compact(0.2)
"""


def run_writer_and_kill(folder: Path, first: int, wanted: int) -> list[str]:
    """Start a writer process, SIGKILL it after `wanted` synced ids; its complete lines."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), str(first)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    assert writer.stdout is not None
    lines: list[str] = []
    try:
        seen = 0
        while seen < wanted:
            line = writer.stdout.readline().decode()
            assert line, "writer stopped early"
            lines.append(line)
            seen += len(line.split()) - 1
        time.sleep(random.uniform(0, 0.05))
    finally:
        writer.send_signal(signal.SIGKILL)
        rest = writer.stdout.read().decode()
        writer.stdout.close()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    return lines + [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]


def test_every_synced_chunk_survives_kill_9(folder: Path) -> None:
    synced: set[bytes] = set()
    doomed: set[bytes] = set()
    for round_ in range(4):
        for line in run_writer_and_kill(folder, round_ * 1_000_000, 300 + 150 * round_):
            kind, *ids = line.split()
            (synced if kind == "put" else doomed).update(bytes.fromhex(i) for i in ids)
        with ChunkStore(folder, pack_limit=256 * 1024) as store:
            live = synced - doomed
            assert all(store.has_many(live))
            for cid in live:
                assert blake3.blake3(store.get(cid)).digest() == cid
            assert store.scrub().corrupted == ()
    assert len(synced - doomed) > 1000
