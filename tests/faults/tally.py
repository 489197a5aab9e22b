"""What the fault suite actually did in this run, counted as it happens, for the summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Tally:
    """Counts of one run: faults injected, how workflows ended, what the checks covered."""

    faults: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    completed_on_rerun: int = 0
    undone: int = 0
    bytes_verified: int = 0
    checks: Counter[str] = field(default_factory=Counter)

    def fault(self, kind: str) -> None:
        """One fault injected (a process killed, a disk full, a node slowed, a clock step)."""
        self.faults[kind] += 1

    def ended(self, finished: bool, rerun: bool = False) -> None:
        """One interrupted workflow ended: finished (by itself or on the operator's rerun)."""
        if not finished:
            self.undone += 1
        elif rerun:
            self.completed_on_rerun += 1
        else:
            self.completed += 1

    def checked(self, invariant: str, count: int = 1) -> None:
        """`count` checks of `invariant` passed."""
        self.checks[invariant] += count

    def lines(self) -> list[str]:
        """The summary table, one line per row."""
        rows = [
            ("faults injected", sum(self.faults.values())),
            *((f"  {kind}", n) for kind, n in sorted(self.faults.items())),
            ("workflows completed", self.completed),
            ("workflows completed on the operator's rerun", self.completed_on_rerun),
            ("workflows undone", self.undone),
            ("bytes verified", self.bytes_verified),
            ("invariants checked", sum(self.checks.values())),
            *((f"  {name}", n) for name, n in sorted(self.checks.items())),
        ]
        width = max(len(name) for name, _n in rows)
        return [f"{name:<{width}}  {n:>12,}" for name, n in rows]


TALLY = Tally()
"""The run's tally: the tests add to it, the terminal summary prints it."""
