"""Manifest benchmark: an incremental snapshot's manifest root and encoding from its parent's.

In one process, for manifests of 21,671 entries (the 2 GiB disk of `snapshot_bench.py`)
and of 1,000,000 entries (a 64 GiB disk written whole at 64 KiB chunks), when a share of
a child manifest's entries was rewritten (`Manifest.changed`, as the transfer node does
for an incremental snapshot): the seconds of its Merkle root from its parent's kept
tree, and of its encoding from its parent's encoded ranges, each against the reference
of the same computed whole (as `snapshot verify` and a parent that is not cached do),
with the bytes of the pieces the parent's pieces do not hold. The reference child is
made the same way from the same parent decoded afresh, with neither tree nor ranges. Then
the seconds of decoding each parent, against the same decoding with the cyclic garbage
collector running (as before `Manifest.decode` paused it). Medians of `--rounds` rounds.
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
CASES = ((0.0, "random"), (0.01, "run"), (0.001, "random"), (0.01, "random"), (0.224, "random"))
"""Shares of the entries rewritten, at random or as one run of neighbours (a log, a database
file). 0.224: the share of chunks that 1% of 4 KiB blocks rewritten at random touch."""


def one_round(parent: Manifest, share: float, where: str, rng: random.Random) -> dict[str, float]:
    """Seconds of the child's root and encoding from the parent's, and computed whole."""
    count = int(len(parent.entries) * share)
    if where == "run":
        start = rng.randrange(len(parent.entries) - count)
        indexes = [i for i, _ in parent.entries[start : start + count]]
    else:
        indexes = rng.sample([i for i, _ in parent.entries], count)
    snapshot, changes = f"{rng.random():.12f}", {i: rng.randbytes(32) for i in indexes}
    child = parent.changed(snapshot, changes)
    found: dict[str, float] = {}
    started = time.perf_counter()
    derived = child.root()
    found["root"] = time.perf_counter() - started
    started = time.perf_counter()
    parts = child.encode_parts()
    found["encode"] = time.perf_counter() - started
    # The reference: the same child of the same parent loaded afresh, with no tree or ranges.
    again = Manifest.decode(parent.encode()).changed(snapshot, changes)
    started = time.perf_counter()
    whole = again.root()
    found["root whole"] = time.perf_counter() - started
    started = time.perf_counter()
    again.encode_parts()
    found["encode whole"] = time.perf_counter() - started
    if derived != whole or b"".join(parts) != again.encode():
        raise SystemExit("the child from the parent's tree and ranges differs from the whole one")
    held = set(parent.encode_parts())
    found["new bytes"] = sum(len(part) for part in parts if part not in held)
    found["bytes"] = sum(len(part) for part in parts)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    args = parser.parse_args()
    rng = random.Random(7)
    print(
        f"{'entries':>9} {'rewritten':>16} {'root s':>8} {'whole':>7} {'ratio':>6}"
        f" {'encode s':>9} {'whole':>7} {'ratio':>6} {'new KiB':>8} {'of KiB':>8}"
    )
    parents = []
    for count in (21_671, 1_000_000):
        entries = tuple((i, rng.randbytes(32)) for i in range(count))
        parent = Manifest("parent", "vm", "root", count * CHUNK, CHUNK, None, entries)
        parents.append(parent)
        parent.root()
        parent.encode_parts()
        for share, where in CASES:
            rounds = [one_round(parent, share, where, rng) for _ in range(args.rounds)]
            m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            print(
                f"{count:9d} {share:8.1%} {where:>7} {m['root']:8.4f} {m['root whole']:7.4f}"
                f" {m['root'] / m['root whole']:6.3f} {m['encode']:9.4f} {m['encode whole']:7.4f}"
                f" {m['encode'] / m['encode whole']:6.3f} {m['new bytes'] / 1024:8.0f}"
                f" {m['bytes'] / 1024:8.0f}"
            )
    print(f"{'entries':>9} {'decode s':>9} {'collector running s':>20} {'ratio':>6}")
    for parent in parents:
        paused, running = decode_times(parent, args.rounds)
        print(f"{len(parent.entries):9d} {paused:9.4f} {running:20.4f} {paused / running:6.3f}")


def decode_times(parent: Manifest, rounds: int) -> tuple[float, float]:
    """Median seconds of decoding `parent`: as `Manifest.decode` does, and collector running."""
    blob = parent.encode()
    paused, running = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        Manifest.decode(blob)
        paused.append(time.perf_counter() - started)
        started = time.perf_counter()
        Manifest._decode(blob)
        running.append(time.perf_counter() - started)
    return statistics.median(paused), statistics.median(running)


if __name__ == "__main__":
    main()
