"""Which snapshots a retention policy keeps, decided as restic's ``forget`` decides.

The model, for the snapshots of one VM (or one schedule):

* Snapshots are sorted newest first (ties broken by id, so decisions are stable).
* Protected snapshots are always kept and stand outside the rules: the rules run on the
  unprotected snapshots only, so a protected snapshot neither uses up a ``keep_*`` count
  nor fills a period bucket, and it is not the anchor of ``keep_within``.
* ``keep_last N`` keeps the N newest.
* ``keep_<period> N`` walks newest to oldest and keeps the newest snapshot of each
  period bucket until N buckets are taken. Buckets are read in the operator's time zone:
  hour ``YYYY-MM-DD HH:00``, day ``YYYY-MM-DD``, ISO week ``YYYY-Www``, month ``YYYY-MM``,
  year ``YYYY``.
* ``keep_within`` keeps what was taken strictly after the newest snapshot minus the span,
  not after "now", so snapshots stop expiring when snapshots stop being taken. Years,
  months, weeks and days step the local calendar (a month before 31 March is 28 or 29
  February); hours are elapsed time.
* A snapshot kept by any rule stays; its reasons name every rule that keeps it, e.g.
  ``("last 3", "daily 2026-03-14", "within 30d")``. A dropped snapshot's reason is
  ``"beyond keep-last N"`` when keep_last is the only rule, else ``"no rule keeps it"``.
* A policy with no rule keeps everything, so a missing policy never deletes a VM's history.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from ledger.errors import InputError

_SPAN_PART = re.compile(r"(\d{1,9})([ymwdh])")
_SPAN_UNITS = ("y", "m", "w", "d", "h")

NO_POLICY = "no retention policy"
NO_RULE = "no rule keeps it"
PROTECTED = "protected"


@dataclass(frozen=True)
class KeepWithin:
    """A span counted back from the newest snapshot: calendar years/months/weeks/days, hours."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        if min(self.years, self.months, self.weeks, self.days, self.hours) < 0:
            raise ValueError(f"a keep-within span cannot be negative: {self!r}")

    def __str__(self) -> str:
        parts = (self.years, self.months, self.weeks, self.days, self.hours)
        return "".join(f"{n}{unit}" for n, unit in zip(parts, _SPAN_UNITS, strict=True) if n)

    def cutoff(self, newest: datetime, tz: ZoneInfo) -> datetime | None:
        """Return the instant this span reaches back to from `newest`; None if before year 1."""
        local = newest.astimezone(tz)
        month_index = local.year * 12 + local.month - 1 - (self.years * 12 + self.months)
        year, month0 = divmod(month_index, 12)
        if year < 1:
            return None
        day = min(local.day, calendar.monthrange(year, month0 + 1)[1])
        try:
            wall = local.replace(year=year, month=month0 + 1, day=day, fold=0)
            wall -= timedelta(days=self.days + 7 * self.weeks)
            return wall.astimezone(UTC) - timedelta(hours=self.hours)
        except OverflowError:
            return None


def parse_keep_within(text: str) -> KeepWithin:
    """Read a span such as ``30d``, ``12h``, ``2w`` or ``1y2m`` (units y, m, w, d, h)."""
    cleaned = text.strip()
    parts = _SPAN_PART.findall(cleaned)
    units = [unit for _, unit in parts]
    if not parts or "".join(n + u for n, u in parts) != cleaned or len(set(units)) != len(units):
        raise InputError(
            f"invalid keep-within {text!r}: use numbers with units y, m, w, d, h "
            "(each at most once), e.g. 30d, 12h or 1y2m"
        )
    amounts = {unit: int(n) for n, unit in parts}
    if not any(amounts.values()):
        raise InputError(f"invalid keep-within {text!r}: the span must be longer than zero")
    return KeepWithin(*(amounts.get(unit, 0) for unit in _SPAN_UNITS))


@dataclass(frozen=True)
class RetentionPolicy:
    """The keep-* rules of one VM or schedule; None switches a rule off."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: KeepWithin | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and value < 1:
                option = field.name.replace("_", "-")
                raise InputError(f"--{option} must be at least 1, got {value}")

    def is_empty(self) -> bool:
        """Tell whether no rule is set, in which case every snapshot is kept."""
        return all(getattr(self, field.name) is None for field in fields(self))


@dataclass(frozen=True)
class Candidate:
    """A snapshot as retention sees it: its id, when it was taken, whether it is protected."""

    id: str
    taken_at: datetime
    protected: bool = False

    def __post_init__(self) -> None:
        if self.taken_at.utcoffset() is None:
            raise ValueError(f"snapshot {self.id}: taken_at must be time-zone aware")


@dataclass(frozen=True)
class Decision:
    """Whether one snapshot stays, and the rules that keep it (or why it goes)."""

    id: str
    keep: bool
    reasons: tuple[str, ...]


def _hour(local: datetime) -> str:
    return f"{local:%Y-%m-%d %H}:00"


def _day(local: datetime) -> str:
    return local.date().isoformat()


def _week(local: datetime) -> str:
    year, week, _ = local.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _month(local: datetime) -> str:
    return f"{local.year:04d}-{local.month:02d}"


def _year(local: datetime) -> str:
    return f"{local.year:04d}"


_PERIODS: tuple[tuple[str, str, Callable[[datetime], str]], ...] = (
    ("keep_hourly", "hourly", _hour),
    ("keep_daily", "daily", _day),
    ("keep_weekly", "weekly", _week),
    ("keep_monthly", "monthly", _month),
    ("keep_yearly", "yearly", _year),
)


def _newest_first(snapshots: Sequence[Candidate]) -> list[Candidate]:
    ids = [snapshot.id for snapshot in snapshots]
    if len(set(ids)) != len(ids):
        raise ValueError("snapshot ids must be unique")
    return sorted(snapshots, key=lambda s: (s.taken_at, s.id), reverse=True)


def _newest_per_bucket(
    ordered: Sequence[Candidate], bucket: Callable[[datetime], str], count: int, tz: ZoneInfo
) -> Iterator[tuple[Candidate, str]]:
    """Yield the newest snapshot of each of the `count` newest buckets, with its bucket."""
    last: str | None = None
    taken = 0
    for snapshot in ordered:
        if taken == count:
            return
        key = bucket(snapshot.taken_at.astimezone(tz))
        if key != last:
            yield snapshot, key
            last = key
            taken += 1


def _rule_reasons(
    ordered: Sequence[Candidate], policy: RetentionPolicy, tz: ZoneInfo
) -> dict[str, list[str]]:
    """Map each snapshot id in `ordered` to the rules of `policy` that keep it."""
    reasons: dict[str, list[str]] = {snapshot.id: [] for snapshot in ordered}
    if policy.keep_last is not None:
        for snapshot in ordered[: policy.keep_last]:
            reasons[snapshot.id].append(f"last {policy.keep_last}")
    for name, label, bucket in _PERIODS:
        count = getattr(policy, name)
        if count is not None:
            for snapshot, key in _newest_per_bucket(ordered, bucket, count, tz):
                reasons[snapshot.id].append(f"{label} {key}")
    if policy.keep_within is not None and ordered:
        cutoff = policy.keep_within.cutoff(ordered[0].taken_at, tz)
        for snapshot in ordered:
            if cutoff is None or snapshot.taken_at > cutoff:
                reasons[snapshot.id].append(f"within {policy.keep_within}")
    return reasons


def _drop_reason(policy: RetentionPolicy) -> str:
    if policy == RetentionPolicy(keep_last=policy.keep_last):
        return f"beyond keep-last {policy.keep_last}"
    return NO_RULE


def decide(snapshots: Sequence[Candidate], policy: RetentionPolicy, tz: ZoneInfo) -> list[Decision]:
    """Decide, newest first, which of one VM's snapshots `policy` keeps and why."""
    ordered = _newest_first(snapshots)
    if policy.is_empty():
        return [Decision(snapshot.id, True, (NO_POLICY,)) for snapshot in ordered]
    reasons = _rule_reasons([s for s in ordered if not s.protected], policy, tz)
    dropped = (_drop_reason(policy),)
    decisions = []
    for snapshot in ordered:
        if snapshot.protected:
            decisions.append(Decision(snapshot.id, True, (PROTECTED,)))
        else:
            kept_by = tuple(reasons[snapshot.id])
            decisions.append(Decision(snapshot.id, bool(kept_by), kept_by or dropped))
    return decisions
