"""Apply a retention policy to a VM's snapshots through the full delete workflow."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.errors import InputError
from ledger.retention import Candidate, KeepWithin, RetentionPolicy, decide, parse_keep_within
from ledger.service import Ledger
from nodes.deletion import Deletion

Runner = Callable[..., Awaitable[Any]]
COUNT_RULES = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)


def policy_from(args: dict[str, Any]) -> RetentionPolicy:
    """A policy from request arguments: counts by rule name, keep_within as text."""
    counts: dict[str, int | None] = {}
    for rule in COUNT_RULES:
        value = args.get(rule)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InputError(f"--{rule.replace('_', '-')} must be a whole number")
        counts[rule] = value
    within_text = args.get("keep_within")
    within: KeepWithin | None = None
    if within_text is not None:
        if not isinstance(within_text, str):
            raise InputError("--keep-within must be a span such as 30d")
        within = parse_keep_within(within_text)
    return RetentionPolicy(keep_within=within, **counts)


def zone(name: str) -> ZoneInfo:
    """A time zone by name, or a clear error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"unknown time zone {name!r}") from None


class Retention:
    """Decide with ``ledger.retention`` and delete what no rule keeps, one snapshot at a time."""

    def __init__(self, ledger: Ledger, deletion: Deletion, on_ledger: Runner) -> None:
        self.ledger = ledger
        self.deletion = deletion
        self._on_ledger = on_ledger

    async def apply(
        self, vm: str, policy: RetentionPolicy, tz: ZoneInfo, dry_run: bool
    ) -> dict[str, Any]:
        """Return every decision; unless `dry_run`, delete the snapshots no rule keeps."""
        committed = await self._on_ledger(self.ledger.projection.snapshots, vm, "committed")
        candidates = [
            Candidate(s["id"], dt.datetime.fromtimestamp(s["requested_at_ms"] / 1000, dt.UTC))
            for s in committed
        ]
        decisions = decide(candidates, policy, tz)
        deleted = []
        if not dry_run:
            for decision in decisions:
                if not decision.keep:
                    reason = "retention: " + "; ".join(decision.reasons)
                    await self.deletion.delete(decision.id, reason=reason, gc=False)
                    deleted.append(decision.id)
        collected = await self.deletion.collect_reporting() if deleted else {"gc": None}
        return {
            "vm": vm,
            "dry_run": dry_run,
            "deleted": deleted,
            **collected,
            "decisions": [
                {"id": d.id, "keep": d.keep, "reasons": list(d.reasons)} for d in decisions
            ],
        }
