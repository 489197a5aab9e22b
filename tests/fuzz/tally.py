"""How many examples each fuzz target ran, and how many each target runs by default.

``VMSNAP_FUZZ_EXAMPLES=N`` multiplies every target's default example count by N, so a
longer run needs no change to the tests: ``VMSNAP_FUZZ_EXAMPLES=20 pytest tests/fuzz``.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

RAN: Counter[str] = Counter()
"""Examples run so far in this session, by target (shrinking runs included)."""


def scale() -> int:
    """The factor ``VMSNAP_FUZZ_EXAMPLES`` asks for (1 when unset)."""
    raw = os.environ.get("VMSNAP_FUZZ_EXAMPLES", "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"VMSNAP_FUZZ_EXAMPLES must be a positive integer, not {raw!r}")
    return int(raw)


def fuzz(examples: int) -> settings:
    """Settings of a fuzz target that runs `examples` examples by default.

    No deadline (the machine is shared and a real node may be slow to answer once), and
    fixtures may be module-scoped real processes, which hypothesis would otherwise flag.
    """
    return settings(
        max_examples=examples * scale(),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


def ran(target: str) -> None:
    """Count one example of `target`."""
    RAN[target] += 1
