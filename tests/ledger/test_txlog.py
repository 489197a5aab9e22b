from __future__ import annotations

import gc
import struct
import zlib
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import cbor2
import pytest

from ledger.errors import LedgerCorrupted
from ledger.txlog import MAGIC, LoggedBlock, TxLog

RECORD_HEADER = struct.Struct(">III")


def frame_header(body: bytes) -> bytes:
    """Length, body checksum, and the checksum of those two."""
    fields = struct.pack(">II", len(body), zlib.crc32(body))
    return fields + struct.pack(">I", zlib.crc32(fields))


def block(number: int) -> LoggedBlock:
    return LoggedBlock(
        number=number,
        timestamp=1_767_225_600 + number,
        raw_tx=b"" if number == 0 else bytes([number]) * (40 + number),
        block_hash=bytes([number]) * 32,
    )


def record(fields: object) -> bytes:
    body = cbor2.dumps(fields, canonical=True)
    return frame_header(body) + body


def block_record(n: int) -> bytes:
    b = block(n)
    return record({"n": b.number, "ts": b.timestamp, "raw": b.raw_tx, "hash": b.block_hash})


def record_offsets(log: bytes) -> list[int]:
    offsets, offset = [], len(MAGIC)
    while offset < len(log):
        offsets.append(offset)
        length, _crc, _header_crc = RECORD_HEADER.unpack_from(log, offset)
        offset += RECORD_HEADER.size + length
    return offsets


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """A log file of four blocks, closed."""
    path = tmp_path / "transactions.log"
    with closing(TxLog(path)) as log:
        for n in range(4):
            log.append(block(n))
    return path


def test_new_log_is_only_the_magic_line(tmp_path: Path) -> None:
    path = tmp_path / "transactions.log"

    with closing(TxLog(path)) as log:
        assert log.blocks == []

    assert path.read_bytes() == MAGIC


def test_appended_blocks_are_read_back_in_order(log_path: Path) -> None:
    with closing(TxLog(log_path)) as log:
        assert log.blocks == [block(n) for n in range(4)]


def test_record_is_length_checksum_and_canonical_cbor(log_path: Path) -> None:
    data = log_path.read_bytes()

    assert data.startswith(MAGIC)
    assert data[len(MAGIC) :] == b"".join(block_record(n) for n in range(4))


def test_append_out_of_order_is_refused(log_path: Path) -> None:
    with closing(TxLog(log_path)) as log:
        with pytest.raises(LedgerCorrupted):
            log.append(block(5))
        assert len(log.blocks) == 4
    with closing(TxLog(log_path)) as reopened:
        assert len(reopened.blocks) == 4


@pytest.mark.parametrize(
    "tear",
    [
        pytest.param(lambda rec: rec[:3], id="inside-the-header"),
        pytest.param(lambda rec: rec[: RECORD_HEADER.size], id="header-only"),
        pytest.param(lambda rec: rec[: len(rec) // 2], id="half-a-record"),
        pytest.param(lambda rec: rec[:-1] + bytes([rec[-1] ^ 0xFF]), id="bad-checksum"),
    ],
)
def test_torn_record_at_the_end_is_cut_off(log_path: Path, tear: Callable[[bytes], bytes]) -> None:
    intact = log_path.read_bytes()
    log_path.write_bytes(intact + tear(block_record(4)))

    with closing(TxLog(log_path)) as log:
        assert log.blocks == [block(n) for n in range(4)]
        assert log_path.read_bytes() == intact
        log.append(block(4))
    with closing(TxLog(log_path)) as reopened:
        assert reopened.blocks == [block(n) for n in range(5)]


def flip(where: int, mask: int) -> Callable[[bytes], bytes]:
    """Damage the second of four records at byte `where` of it."""

    def damage(log: bytes) -> bytes:
        out = bytearray(log)
        out[record_offsets(log)[1] + where] ^= mask
        return bytes(out)

    return damage


def swap_second_record(replacement: bytes) -> Callable[[bytes], bytes]:
    def damage(log: bytes) -> bytes:
        offsets = record_offsets(log)
        return log[: offsets[1]] + replacement + log[offsets[2] :]

    return damage


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda log: b"SOMETHING-ELSE\n" + log[len(MAGIC) :], id="other-magic"),
        pytest.param(flip(RECORD_HEADER.size + 3, 0x01), id="body"),
        pytest.param(flip(4, 0x01), id="checksum"),
        pytest.param(flip(3, 0x01), id="length-low-byte"),
        pytest.param(flip(0, 0x01), id="length-high-byte"),
        pytest.param(swap_second_record(block_record(2)), id="out-of-order"),
        pytest.param(swap_second_record(record([1, 2, 3])), id="not-a-block"),
        pytest.param(swap_second_record(record({"n": 1})), id="missing-fields"),
        pytest.param(
            swap_second_record(frame_header(b"\xff\xff") + b"\xff\xff"),
            id="not-cbor",
        ),
    ],
)
def test_damaged_log_is_refused_and_left_as_it_was(
    log_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    damaged = damage(log_path.read_bytes())
    log_path.write_bytes(damaged)

    with pytest.raises(LedgerCorrupted):
        TxLog(log_path).close()

    assert log_path.read_bytes() == damaged


def test_refused_log_leaves_no_file_open(log_path: Path) -> None:
    log_path.write_bytes(flip(RECORD_HEADER.size + 3, 0x01)(log_path.read_bytes()))

    with pytest.raises(LedgerCorrupted):
        TxLog(log_path).close()
    gc.collect()
