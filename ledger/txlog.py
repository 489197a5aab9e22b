"""The append-only log of signed raw transactions an embedded chain has applied."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cbor2

from ledger.errors import LedgerCorrupted

MAGIC = b"VMSNAP-TXLOG-1\n"
_HEADER = struct.Struct(">III")
_FIELDS = struct.Struct(">II")


@dataclass(frozen=True)
class LoggedBlock:
    """One block of the embedded chain: its number, timestamp, transaction and hash.

    Block 0 is the genesis block and carries no transaction.
    """

    number: int
    timestamp: int
    raw_tx: bytes
    block_hash: bytes


class TxLog:
    """Append-only file of the blocks an embedded chain mined, one record each.

    Layout::

        MAGIC
        record*   record = u32 length | u32 crc32(body) | u32 crc32(length, crc32(body)) | body
                  body   = canonical CBOR {"n": int, "ts": int, "raw": bytes, "hash": bytes}

    Every append is flushed and fsynced before the caller is answered. A torn
    record at the end (a crash mid-write: a short header, a short body, or
    zeros) is cut off on open. A header whose own checksum fails, or a damaged
    record followed by more bytes, means the file was altered: it is refused
    and left as it is.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blocks: list[LoggedBlock] = []
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a+b")
        try:
            if fresh:
                self._file.write(MAGIC)
                self._sync()
            else:
                self._load()
        except BaseException:
            self._file.close()
            raise

    def append(self, block: LoggedBlock) -> None:
        """Write `block` durably after the last one."""
        if block.number != len(self.blocks):
            raise LedgerCorrupted(
                f"transaction log expects block {len(self.blocks)}, got {block.number}"
            )
        body = cbor2.dumps(
            {
                "n": block.number,
                "ts": block.timestamp,
                "raw": block.raw_tx,
                "hash": block.block_hash,
            },
            canonical=True,
        )
        fields = _FIELDS.pack(len(body), zlib.crc32(body))
        self._file.write(fields + struct.pack(">I", zlib.crc32(fields)) + body)
        self._sync()
        self.blocks.append(block)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        if not data.startswith(MAGIC):
            raise LedgerCorrupted(f"{self.path} is not a vmsnap transaction log")
        offset = len(MAGIC)
        while offset < len(data):
            block, end = self._parse(data, offset)
            if block is None:
                break
            self.blocks.append(block)
            offset = end
        if offset < len(data):
            self._file.truncate(offset)
            self._sync()

    def _parse(self, data: bytes, offset: int) -> tuple[LoggedBlock | None, int]:
        """Return the record at `offset` and where it ends; (None, offset) for a torn tail."""
        rest = data[offset:]
        if len(rest) < _HEADER.size or not rest.strip(b"\0"):
            return None, offset
        length, crc, header_crc = _HEADER.unpack_from(data, offset)
        if zlib.crc32(data[offset : offset + _FIELDS.size]) != header_crc:
            raise LedgerCorrupted(f"{self.path}: damaged record header at byte {offset}")
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if end > len(data):
            return None, offset
        body = data[start:end]
        if zlib.crc32(body) != crc:
            if end < len(data):
                raise LedgerCorrupted(f"{self.path}: damaged record at byte {offset}")
            return None, offset
        try:
            fields = cbor2.loads(body)
            block = LoggedBlock(fields["n"], fields["ts"], fields["raw"], fields["hash"])
        except (cbor2.CBORDecodeError, KeyError, TypeError) as err:
            raise LedgerCorrupted(f"{self.path}: unreadable record at byte {offset}") from err
        if block.number != len(self.blocks):
            raise LedgerCorrupted(f"{self.path}: block {block.number} out of order")
        return block, end
