"""Retention rules as operators give them and the ledger records them (no node code here)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ledger import events
from ledger.errors import InputError
from ledger.retention import KeepWithin, RetentionPolicy, parse_keep_within
from ledger.zones import zone

COUNT_RULES = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
_RULE_FIELDS = dataclasses.fields(events.RetentionRules)


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


def rules_from(args: dict[str, Any], default_tz: str) -> events.RetentionRules:
    """Checked rules from request arguments (``tz`` defaults to `default_tz`)."""
    policy = policy_from(args)
    tz = str(args.get("tz") or default_tz)
    zone(tz)
    within = str(policy.keep_within) if policy.keep_within is not None else None
    counts = {rule: getattr(policy, rule) for rule in COUNT_RULES}
    return events.RetentionRules(keep_within=within, tz=tz, **counts)


def no_rules(tz: str) -> events.RetentionRules:
    """Rules that keep everything."""
    return events.RetentionRules(None, None, None, None, None, None, None, tz)


def has_rules(rules: events.RetentionRules | dict[str, Any] | None) -> bool:
    """Tell whether `rules` sets any keep-* rule."""
    if rules is None:
        return False
    plain = rules if isinstance(rules, dict) else events.as_dict(rules)
    return any(plain.get(rule) is not None for rule in (*COUNT_RULES, "keep_within"))


def recorded(plain: dict[str, Any]) -> events.RetentionRules:
    """Rules as the projection stores them, back as a value."""
    values: dict[str, Any] = {f.name: plain.get(f.name) for f in _RULE_FIELDS}
    return events.RetentionRules(**values)


def describe(rules: events.RetentionRules | dict[str, Any]) -> str:
    """Rules as an operator writes them, e.g. ``keep-last 3, keep-within 30d``."""
    plain = rules if isinstance(rules, dict) else events.as_dict(rules)
    parts = [
        f"{rule.replace('_', '-')} {plain[rule]}"
        for rule in (*COUNT_RULES, "keep_within")
        if plain.get(rule) is not None
    ]
    return ", ".join(parts) or "keep everything"
