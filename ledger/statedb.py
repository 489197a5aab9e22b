"""The EVM key-value database of an embedded chain, checkpointed to SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from eth.db.backends.base import BaseDB


class StateStore(BaseDB):
    """py-evm's key-value store, held in memory and checkpointed to one SQLite file.

    Layout: a single table ``kv(key BLOB PRIMARY KEY, value BLOB)``. Reads are
    served from memory; writes are collected and written in one SQLite
    transaction by :meth:`checkpoint`, which the chain calls after each block.
    A crash loses at most the blocks since the last checkpoint, and those are
    re-applied from the transaction log.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL)"
        )
        self._kv: dict[bytes, bytes] = dict(self._db.execute("SELECT key, value FROM kv"))
        self._dirty: dict[bytes, bytes | None] = {}

    def __getitem__(self, key: bytes) -> bytes:
        return self._kv[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._kv[key] = value
        self._dirty[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self._kv[key]
        self._dirty[key] = None

    def _exists(self, key: bytes) -> bool:
        return key in self._kv

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._kv)

    def __len__(self) -> int:
        return len(self._kv)

    @property
    def empty(self) -> bool:
        """True when nothing has been stored yet."""
        return not self._kv

    def checkpoint(self) -> None:
        """Write every change since the last checkpoint in one transaction."""
        if not self._dirty:
            return
        puts = [(k, v) for k, v in self._dirty.items() if v is not None]
        dels = [(k,) for k, v in self._dirty.items() if v is None]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", puts)
        self._db.executemany("DELETE FROM kv WHERE key = ?", dels)
        self._db.execute("COMMIT")
        self._dirty.clear()

    def discard(self) -> None:
        """Forget the changes since the last checkpoint (the in-memory view is reloaded)."""
        self._dirty.clear()
        self._kv = dict(self._db.execute("SELECT key, value FROM kv"))

    def close(self) -> None:
        """Close the SQLite file."""
        self._db.close()
