"""A volume's metadata (``meta.sqlite``): its tables and the connection that writes them.

Tables::

    volume:     size, chunk size, current generation, base generation and its view
    chunks:     idx -> generation of its last write (written chunks only)
    views:      name -> generation it froze
    preserved:  (idx, gen_from, gen_to) -> offset in cow.data
                (content written at gen_from, seen by views whose generation lies
                in [gen_from, gen_to]; NULL offset = zeros)
    masks:      (gen, idx) -> blocks of the chunk written in that sealed generation
                (nodes/volume_masks.py)
    mask_floor: the oldest generation whose masks are all recorded
    bases:      view -> generation, for the last `BASE_HISTORY` views made the base

The connection logs commits ahead (WAL) with ``synchronous=NORMAL`` and does not checkpoint
as it commits (``wal_autocheckpoint=0``): the volume checkpoints on a connection of its own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS volume (
    id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    generation INTEGER NOT NULL, base_generation INTEGER NOT NULL, base_view TEXT);
CREATE TABLE IF NOT EXISTS chunks (idx INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_gen ON chunks (gen);
CREATE TABLE IF NOT EXISTS views (name TEXT PRIMARY KEY, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS preserved (
    idx INTEGER NOT NULL, gen_from INTEGER NOT NULL, gen_to INTEGER NOT NULL,
    offset INTEGER, PRIMARY KEY (idx, gen_from));
CREATE TABLE IF NOT EXISTS masks (
    idx INTEGER NOT NULL, gen INTEGER NOT NULL, mask BLOB NOT NULL,
    PRIMARY KEY (gen, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mask_floor (id INTEGER PRIMARY KEY CHECK (id = 1), gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bases (view TEXT PRIMARY KEY, gen INTEGER NOT NULL);
"""


def connect(folder: Path) -> sqlite3.Connection:
    """Open the metadata of the volume in `folder`, creating the tables it lacks."""
    db = sqlite3.connect(folder / "meta.sqlite", check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(_SCHEMA)
    db.isolation_level = "DEFERRED"
    return db
