"""The mirror journal: hash chain, tags, torn tails, differences and their roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.journal import (
    RECORD,
    Journal,
    JournalBroken,
    Record,
    difference,
    difference_root,
    genesis,
    verify,
)

MIRROR = "ab" * 32
A, B, C = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_appended_records_chain_from_the_genesis_and_survive_a_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.log", MIRROR)
    assert (journal.position, journal.head) == (0, genesis(MIRROR))
    journal.append([(3, A), (7, None)])
    journal.append([(3, B)])
    head = journal.head
    journal.close()
    again = Journal(tmp_path / "j.log", MIRROR)
    assert again.position == 3 and again.head == head
    assert [(r.seq, r.index, r.chunk) for r in again.records] == [
        (1, 3, A),
        (2, 7, None),
        (3, 3, B),
    ]
    assert verify(MIRROR, again.records) == head


def test_a_record_cut_short_by_a_crash_is_dropped_on_open(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.log", MIRROR)
    journal.append([(1, A), (2, B)])
    journal.close()
    with (tmp_path / "j.log").open("ab") as out:
        out.write(Record(3, 9, C, bytes(32)).pack()[: RECORD.size // 2])
    again = Journal(tmp_path / "j.log", MIRROR)
    assert again.position == 2
    assert (tmp_path / "j.log").stat().st_size == 2 * RECORD.size


def test_an_altered_record_breaks_the_chain(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.log", MIRROR)
    journal.append([(1, A), (2, B), (3, C)])
    journal.close()
    raw = bytearray((tmp_path / "j.log").read_bytes())
    raw[RECORD.size + 20] ^= 1
    (tmp_path / "j.log").write_bytes(bytes(raw))
    with pytest.raises(JournalBroken, match="breaks at record 2"):
        Journal(tmp_path / "j.log", MIRROR)


def test_a_copy_refuses_records_that_do_not_follow_its_head(tmp_path: Path) -> None:
    source = Journal(tmp_path / "a.log", MIRROR)
    records = source.append([(1, A), (2, B)])
    copy = Journal(tmp_path / "b.log", MIRROR)
    with pytest.raises(JournalBroken):
        copy.extend(records[1:])
    copy.extend(records)
    assert copy.head == source.head


def test_difference_between_tags_is_the_last_write_to_each_chunk() -> None:
    records = [
        Record(1, 5, A, b""),
        Record(2, 6, B, b""),
        Record(3, 5, C, b""),
        Record(4, 6, None, b""),
    ]
    assert difference(records, 0, 4) == {5: C, 6: None}
    assert difference(records, 1, 3) == {6: B, 5: C}
    assert difference(records, 4, 4) == {}


def test_difference_root_depends_on_every_index_and_chunk() -> None:
    base = difference_root({5: C, 6: None})
    assert base == difference_root({6: None, 5: C})
    assert base != difference_root({5: C, 6: A})
    assert base != difference_root({5: C, 7: None})
    assert base != difference_root({5: C})
    assert difference_root({}) == bytes(32)
