"""A volume's block masks: which 4 KiB blocks of each chunk its generations wrote.

The current generation's masks are kept in memory, for its partly written chunks only: a
chunk written in the generation without an entry counts as wholly written. The freeze that
ends the generation seals them into the ``masks`` table of the volume's metadata, one row
per chunk it wrote. ``mask_floor`` is the oldest generation whose masks are all recorded:
a volume made before masks existed gets its generation at the first open. After a crash
the current generation's chunks count as wholly written, so no written block is ever
missed. Masks themselves (an int, bit b = block b) are in ``nodes/block_masks.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from nodes.block_masks import decode, encode, full_mask, span_mask


class GenerationMasks:
    """The blocks a volume's generations wrote, by chunk: the current one's in memory.

    The sealed generations' are in ``masks``. The volume's lock guards the calls that
    change them.
    """

    def __init__(self, db: sqlite3.Connection, size: int, chunk_size: int) -> None:
        self._db = db
        self._size, self._chunk = size, chunk_size
        self._current: dict[int, int] = {}
        with db:
            db.execute("INSERT OR IGNORE INTO mask_floor SELECT 1, generation FROM volume")
        self._floor = int(db.execute("SELECT gen FROM mask_floor").fetchone()[0])

    def mark(self, start: int, end: int, first: int, last: int, started: Collection[int]) -> None:
        """Add bytes `start` to `end` (chunks `first` to `last`) to the current generation.

        `started` holds the chunks this write is the first in the generation to touch: their
        masks start here. The others were written before in the generation: a mask grows,
        a chunk without one stays whole.
        """
        masks, size = self._current, self._chunk
        if masks:
            for idx in range(first + 1, last):
                masks.pop(idx, None)
        for idx in {first, last}:
            at = idx * size
            mask = span_mask(max(start, at) - at, min(end, at + size) - at)
            if idx in started:
                if mask != self._full(idx):
                    masks[idx] = mask
            elif idx in masks:
                masks[idx] |= mask

    def mark_within(self, idx: int, start: int, end: int) -> None:
        """Add bytes `start` to `end`, all in chunk `idx`, already written in the generation.

        The VM's usual write, kept to a dict lookup: the chunk was written partly (it has
        a mask) or wholly (it has none).
        """
        if idx in self._current:
            at = idx * self._chunk
            self._current[idx] |= span_mask(start - at, end - at)

    def seal(self, gen: int) -> None:
        """Record the masks of the chunks written in generation `gen`, in the caller's commit.

        Every chunk written gets the full mask in one statement, which SQLite runs without
        the interpreter (a freeze after a whole disk was written seals every chunk); then
        the partly written chunks, and a short last chunk, get their own.
        """
        self._db.execute(
            "INSERT OR REPLACE INTO masks SELECT idx, ?, ? FROM chunks WHERE gen = ?",
            (gen, encode(full_mask(self._chunk)), gen),
        )
        own = dict(self._current)
        last = (self._size - 1) // self._chunk
        if self._full(last) != full_mask(self._chunk):
            own.setdefault(last, self._full(last))
        self._db.executemany(
            "INSERT OR REPLACE INTO masks SELECT idx, ?, ? FROM chunks WHERE idx = ? AND gen = ?",
            ((gen, encode(mask), idx, gen) for idx, mask in own.items()),
        )

    def restart(self) -> None:
        """Start the next generation with no chunk written."""
        self._current = {}

    def drop_through(self, gen: int) -> None:
        """Drop the masks of generations up to `gen`, in the caller's commit; raise the floor."""
        # Raised before the rows go, so a concurrent `changed` that misses some of
        # them sees the new floor and answers whole chunks.
        self._floor = max(self._floor, gen + 1)
        self._db.execute("DELETE FROM masks WHERE gen <= ?", (gen,))
        self._db.execute("UPDATE mask_floor SET gen = ?", (self._floor,))

    def changed(self, indexes: list[int], base: int, gen: int) -> list[tuple[int, int]]:
        """Chunks `indexes`, written after `base` up to `gen`, each with the mask of those blocks.

        A mask may name a block that was not written (when a crash lost the generation's
        masks, or they predate the floor), never miss one.
        """
        rows = self._db.execute(
            "SELECT idx, mask FROM masks WHERE gen > ? AND gen <= ?", (base, gen)
        ).fetchall()
        if base + 1 < self._floor:
            return [(idx, self._full(idx)) for idx in indexes]
        found: dict[int, int] = {}
        for idx, mask in rows:
            found[idx] = found.get(idx, 0) | decode(mask)
        return [(idx, found.get(idx) or self._full(idx)) for idx in indexes]

    def _full(self, idx: int) -> int:
        return full_mask(min(self._chunk, self._size - idx * self._chunk))
