"""Manifest root benchmark: an incremental snapshot's root from its parent's tree.

In one process, for manifests of 21,671 entries (the 2 GiB disk of `snapshot_bench.py`)
and of 1,000,000 entries (a 64 GiB disk written whole at 64 KiB chunks): the seconds of a
child manifest's Merkle root when a share of its entries was rewritten, computed from
its parent's kept tree (`Manifest.changed`, as the transfer node does for an incremental
snapshot), against the reference of the same root computed from every leaf (as
`snapshot verify` and a parent that is not cached do). Medians of `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.manifest import Manifest

CHUNK = 64 * 1024
SHARES = (0.0, 0.001, 0.01, 0.224)
"""0.224: the share of chunks that 1% of 4 KiB blocks rewritten at random touch."""


def one_round(parent: Manifest, share: float, rng: random.Random) -> tuple[float, float]:
    """Seconds of the child's root from the parent's tree, and computed whole."""
    indexes = rng.sample([i for i, _ in parent.entries], int(len(parent.entries) * share))
    child = parent.changed(f"{rng.random():.12f}", {i: rng.randbytes(32) for i in indexes})
    started = time.perf_counter()
    derived = child.root()
    from_parent = time.perf_counter() - started
    again = Manifest.decode(child.encode())
    started = time.perf_counter()
    whole = again.root()
    from_leaves = time.perf_counter() - started
    if derived != whole:
        raise SystemExit("the root from the parent's tree differs from the whole one")
    return from_parent, from_leaves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    args = parser.parse_args()
    rng = random.Random(7)
    print(f"{'entries':>9} {'rewritten':>9} {'from parent s':>14} {'whole s':>9} {'ratio':>7}")
    for count in (21_671, 1_000_000):
        entries = tuple((i, rng.randbytes(32)) for i in range(count))
        parent = Manifest("parent", "vm", "root", count * CHUNK, CHUNK, None, entries)
        parent.root()
        for share in SHARES:
            rounds = [one_round(parent, share, rng) for _ in range(args.rounds)]
            mine = statistics.median(r[0] for r in rounds)
            reference = statistics.median(r[1] for r in rounds)
            print(f"{count:9d} {share:9.1%} {mine:14.4f} {reference:9.4f} {mine / reference:7.3f}")


if __name__ == "__main__":
    main()
