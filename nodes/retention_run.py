"""Retention of a VM's snapshots: rules by group, decided, recorded, then deleted in full.

A VM's committed snapshots fall into groups, each governed by one set of rules:
the snapshots a schedule took are governed by that schedule's rules (when it has
any); every other snapshot (taken by hand, by a schedule without rules, or by a
schedule since cleared) by the VM's own rules (``vmsnap retention set``). Rules
given on the command line instead govern all of the VM's snapshots as one group.
Each group's decisions are recorded (``RetentionApplied``) before anything goes;
each snapshot no rule keeps then goes through the full delete workflow, marked
on chain as deleted by retention, and garbage is collected once at the end.
The deleter account signs every event of a run; without it a run is refused
before anything is recorded or deleted (a dry run needs no key).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from ledger import events
from ledger.contract import MAX_BATCH, MAX_PAYLOAD, Entry
from ledger.retention import Candidate, decide
from ledger.rules import describe, has_rules, policy_from, recorded
from ledger.service import Ledger
from ledger.zones import zone
from nodes.crashpoints import crash_point
from nodes.deletion import Deletion

Runner = Callable[..., Awaitable[Any]]
ALL = "all"
VM_GROUP = "vm"


class Retention:
    """Decide with ``ledger.retention``, record the decisions, delete what no rule keeps."""

    def __init__(self, ledger: Ledger, deletion: Deletion, on_ledger: Runner) -> None:
        self.ledger = ledger
        self.deletion = deletion
        self._on_ledger = on_ledger

    async def apply(
        self, vm: str, dry_run: bool, rules: events.RetentionRules | None = None
    ) -> dict[str, Any]:
        """Apply `rules` to all of `vm`'s snapshots, or without rules the rules stored for it."""
        if not dry_run:
            await self._on_ledger(self.ledger.check_deleter)
        committed = await self._on_ledger(self.ledger.projection.snapshots, vm, "committed")
        groups = [(ALL, rules, committed)] if rules else await self._stored_groups(vm, committed)
        decided: list[dict[str, Any]] = []
        doomed: list[tuple[str, str]] = []
        for group, group_rules, snaps in groups:
            policy = policy_from(events.as_dict(group_rules))
            candidates = [_candidate(s) for s in snaps]
            decisions = decide(candidates, policy, zone(group_rules.tz))
            if not dry_run:
                await self._record(vm, group, group_rules, decisions)
            for d in decisions:
                decided.append(
                    {"id": d.id, "keep": d.keep, "reasons": list(d.reasons), "group": group}
                )
                if not d.keep:
                    doomed.append((d.id, f"retention ({group}): " + "; ".join(d.reasons)))
        deleted = []
        if not dry_run:
            crash_point("retention.decided", vm)
            for snapshot, reason in doomed:
                await self.deletion.delete(snapshot, reason=reason, gc=False, retired=True)
                deleted.append(snapshot)
                crash_point("retention.deleted_one", vm)
        collected = (
            await self.deletion.collect_reporting(deleting=True) if deleted else {"gc": None}
        )
        return {
            "vm": vm,
            "dry_run": dry_run,
            "groups": [
                {"group": g, "rules": describe(r), "snapshots": len(s)} for g, r, s in groups
            ],
            "deleted": deleted,
            **collected,
            "decisions": decided,
        }

    async def _stored_groups(
        self, vm: str, committed: list[dict[str, Any]]
    ) -> list[tuple[str, events.RetentionRules, list[dict[str, Any]]]]:
        schedules = await self._on_ledger(self.ledger.projection.schedules, vm)
        governed = {
            s["name"]: recorded(s["retention"]) for s in schedules if has_rules(s["retention"])
        }
        groups = [
            (f"schedule {name}", rules, [s for s in committed if s["schedule"] == name])
            for name, rules in governed.items()
        ]
        own = await self._on_ledger(self.ledger.projection.retention_policy, vm)
        if own is not None:
            rest = [s for s in committed if s["schedule"] not in governed]
            groups.append((VM_GROUP, recorded(own), rest))
        return groups

    async def _record(
        self, vm: str, group: str, rules: events.RetentionRules, decisions: list[Any]
    ) -> None:
        now = self.ledger.now_ms()
        recorded_decisions = [
            events.RetentionDecision(d.id, d.keep, tuple(d.reasons)) for d in decisions
        ]
        parts = _pack(vm, group, rules, recorded_decisions, now)
        applied = [
            events.RetentionApplied(now, vm, group, rules, tuple(p), i + 1, len(parts))
            for i, p in enumerate(parts)
        ]
        for start in range(0, len(applied), MAX_BATCH):
            version = await self._on_ledger(
                self.ledger.projection.stream_version, events.vm_stream(vm)
            )
            batch = applied[start : start + MAX_BATCH]
            entries = [Entry(e, version + i) for i, e in enumerate(batch)]
            await self._on_ledger(self.ledger.append, entries, True)


def _candidate(snap: dict[str, Any]) -> Candidate:
    taken = dt.datetime.fromtimestamp(snap["requested_at_ms"] / 1000, dt.UTC)
    return Candidate(snap["id"], taken, bool(snap.get("protected")))


def _pack(
    vm: str,
    group: str,
    rules: events.RetentionRules,
    decisions: list[events.RetentionDecision],
    now: int,
) -> list[list[events.RetentionDecision]]:
    """Split decisions into parts whose events fit the ledger's payload limit."""
    parts: list[list[events.RetentionDecision]] = [[]]
    for decision in decisions:
        trial = [*parts[-1], decision]
        probe = events.RetentionApplied(now, vm, group, rules, tuple(trial), 9999, 9999)
        if parts[-1] and len(events.encode(probe)) > MAX_PAYLOAD:
            parts.append([decision])
        else:
            parts[-1] = trial
    return parts
