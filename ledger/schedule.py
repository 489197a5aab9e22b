"""When a VM's periodic snapshot runs: schedules parsed from text, computed in their time zone.

Grammar (case-insensitive; `describe()` gives the canonical form, which parses back)::

    mon,thu 02:30            weekly on the listed weekdays (mon .. sun)
    daily 03:00              every day
    monthly 31 03:00         day 1-31 of each month; a shorter month runs on its last day
    every 10d 02:00          every N days counted from the anchor date (the anchor day included)
    every 6h                 every N elapsed hours from the anchor's local hour boundary
    cron 0 22 * * 3          five-field cron with Vixie semantics (`parse_cron` adds the prefix)

Daylight saving: a wall-clock time that does not exist (spring-forward gap) runs once, shifted
forward by the gap length (02:30 on Europe/Berlin's spring-forward day runs at 03:30 CEST); a
wall-clock time that happens twice (autumn fold) runs once, at its first occurrence. `every Nh`
counts elapsed hours, so its runs move on the wall clock across a change. Instants returned are
aware and in UTC; every function takes the instant it needs and reads no clock.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ledger import zones
from ledger.errors import InputError

_ONE_DAY = timedelta(days=1)
_HORIZON_DAYS = 40 * 366
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = tuple(calendar.day_name[i].lower() for i in range(7))
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_EVERY = re.compile(r"(\d{1,5})([dh])")
_CRON_ITEM = re.compile(r"(?:(\*)|(\d{1,2})(?:-(\d{1,2}))?)(?:/(\d{1,2}))?")
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_LONGEST_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_USAGE = (
    "use 'wed 22:00', 'mon,thu 02:30', 'daily 03:00', 'monthly 1 03:00', "
    "'every 10d 02:00', 'every 6h' or 'cron M H DOM MON DOW'"
)


@dataclass(frozen=True)
class _Weekly:
    weekdays: frozenset[int]
    at: time

    def times_on(self, day: date) -> tuple[time, ...]:
        return (self.at,) if day.weekday() in self.weekdays else ()


@dataclass(frozen=True)
class _Monthly:
    day: int
    at: time

    def times_on(self, day: date) -> tuple[time, ...]:
        last = calendar.monthrange(day.year, day.month)[1]
        return (self.at,) if day.day == min(self.day, last) else ()


@dataclass(frozen=True)
class _EveryDays:
    days: int
    at: time
    anchor: date

    def times_on(self, day: date) -> tuple[time, ...]:
        return (self.at,) if (day - self.anchor).days % self.days == 0 else ()


@dataclass(frozen=True)
class _EveryHours:
    hours: int
    anchor: datetime


@dataclass(frozen=True)
class _Cron:
    times: tuple[time, ...]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    dom_star: bool
    dow_star: bool

    def times_on(self, day: date) -> tuple[time, ...]:
        if day.month not in self.months:
            return ()
        dom_ok = day.day in self.doms
        dow_ok = day.isoweekday() % 7 in self.dows
        if self.dom_star or self.dow_star:
            return self.times if dom_ok and dow_ok else ()
        return self.times if dom_ok or dow_ok else ()


_CalendarRule = _Weekly | _Monthly | _EveryDays | _Cron


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: canonical `text`, IANA zone `tz`, and the `anchor` of `every` forms.

    `anchor` is None except for `every Nd` (a local date) and `every Nh` (a UTC instant on a
    local hour boundary); persisting `text`, `tz` and `anchor` is enough to rebuild it.
    """

    text: str
    tz: str
    anchor: date | None
    rule: _CalendarRule | _EveryHours = field(repr=False)
    zone: ZoneInfo = field(repr=False, compare=False)

    def describe(self) -> str:
        """Return the canonical text, which `parse_schedule` turns back into this schedule."""
        return self.text

    def next_after(self, instant: datetime) -> datetime:
        """Return the first run strictly after `instant`, in UTC."""
        _require_aware(instant, "instant")
        if isinstance(self.rule, _EveryHours):
            step = timedelta(hours=self.rule.hours)
            return self.rule.anchor + ((instant - self.rule.anchor) // step + 1) * step
        best: datetime | None = None
        best_day: date | None = None
        for day in _days_from(instant.astimezone(self.zone).date() - _ONE_DAY):
            # A gap shifts runs forward: the day after the first hit may hold an earlier run.
            if best is not None and best_day is not None and day > best_day + _ONE_DAY:
                return best
            later = [run for run in _runs_on(self.rule, self.zone, day) if run > instant]
            if later:
                best = min([*later, best]) if best is not None else min(later)
                best_day = best_day or day
        if best is not None:
            return best
        raise InputError(f"schedule {self.text!r} has no run within {_HORIZON_DAYS} days")

    def runs_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Return every run with `start` < run <= `end`, oldest first, in UTC."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        if end <= start:
            return []
        if isinstance(self.rule, _EveryHours):
            runs = []
            run = self.next_after(start)
            while run <= end:
                runs.append(run)
                run += timedelta(hours=self.rule.hours)
            return runs
        first = start.astimezone(self.zone).date() - _ONE_DAY
        last = end.astimezone(self.zone).date() + _ONE_DAY
        found: set[datetime] = set()
        day = first
        while day <= last:
            found.update(r for r in _runs_on(self.rule, self.zone, day) if start < r <= end)
            day += _ONE_DAY
        return sorted(found)


def parse_schedule(text: str, tz: str, anchor: date | None = None) -> Schedule:
    """Parse `text` in zone `tz`; `anchor` (date or aware instant) is required by `every` forms."""
    zone = zones.zone(tz)
    words = text.lower().split()
    if not words:
        raise InputError(f"empty schedule: {_USAGE}")
    head, rest = words[0], words[1:]
    rule: _CalendarRule | _EveryHours
    if head == "cron":
        rule, canonical = _parse_cron_fields(rest, text), " ".join(words)
    elif head == "daily":
        at = _time(_one(rest, text, "daily HH:MM"), text)
        rule, canonical = _Weekly(frozenset(range(7)), at), f"daily {at:%H:%M}"
    elif head == "monthly":
        rule = _parse_monthly(rest, text)
        canonical = f"monthly {rule.day} {rule.at:%H:%M}"
    elif head == "every":
        return _parse_every(rest, text, tz, zone, anchor)
    else:
        rule = _parse_weekly(words, text)
        days = ",".join(_WEEKDAYS[d] for d in sorted(rule.weekdays))
        canonical = f"{days} {rule.at:%H:%M}"
    return Schedule(canonical, tz, None, rule, zone)


def parse_cron(expr: str, tz: str) -> Schedule:
    """Parse a five-field cron expression (minute hour day-of-month month day-of-week)."""
    return parse_schedule(f"cron {expr}", tz)


def _require_aware(instant: datetime, name: str) -> None:
    if instant.utcoffset() is None:
        raise InputError(f"{name} {instant.isoformat()} has no time zone")


def _days_from(day: date) -> Iterator[date]:
    for offset in range(_HORIZON_DAYS):
        yield day + timedelta(days=offset)


def _runs_on(rule: _CalendarRule, zone: ZoneInfo, day: date) -> list[datetime]:
    return [_resolve(datetime.combine(day, at), zone) for at in rule.times_on(day)]


def _resolve(local: datetime, zone: ZoneInfo) -> datetime:
    """Map a wall-clock time to UTC: fold=0 picks a fold's first pass and shifts a gap forward."""
    return local.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _fail(text: str, problem: str) -> InputError:
    return InputError(f"invalid schedule {text!r}: {problem}")


def _one(rest: list[str], text: str, usage: str) -> str:
    if len(rest) != 1:
        raise _fail(text, f"expected '{usage}'")
    return rest[0]


def _time(word: str, text: str) -> time:
    match = _TIME.fullmatch(word)
    if not match:
        raise _fail(text, f"time {word!r} is not HH:MM")
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        raise _fail(text, f"time {word!r} is out of range 00:00-23:59")
    return time(hour, minute)


def _parse_weekly(words: list[str], text: str) -> _Weekly:
    if len(words) != 2:
        raise _fail(text, _USAGE)
    weekdays = set()
    for name in words[0].split(","):
        if name in _WEEKDAYS:
            weekdays.add(_WEEKDAYS.index(name))
        elif name in _FULL_WEEKDAYS:
            weekdays.add(_FULL_WEEKDAYS.index(name))
        else:
            raise _fail(text, f"unknown weekday {name!r}: {_USAGE}")
    return _Weekly(frozenset(weekdays), _time(words[1], text))


def _parse_monthly(rest: list[str], text: str) -> _Monthly:
    if len(rest) != 2 or not (rest[0].isascii() and rest[0].isdigit()):
        raise _fail(text, "expected 'monthly DAY HH:MM'")
    day = int(rest[0])
    if not 1 <= day <= 31:
        raise _fail(text, f"day of month {day} is out of range 1-31")
    return _Monthly(day, _time(rest[1], text))


def _parse_every(
    rest: list[str], text: str, tz: str, zone: ZoneInfo, anchor: date | None
) -> Schedule:
    match = _EVERY.fullmatch(rest[0]) if rest else None
    if not match:
        raise _fail(text, "expected 'every Nd HH:MM' or 'every Nh'")
    count, unit = int(match[1]), match[2]
    if count < 1:
        raise _fail(text, "the interval must be at least 1")
    if anchor is None:
        raise _fail(text, "an 'every' schedule needs an anchor (the date it starts from)")
    if isinstance(anchor, datetime):
        _require_aware(anchor, "anchor")
    if unit == "d":
        at = _time(_one(rest[1:], text, "every Nd HH:MM"), text)
        day = _anchor_day(anchor, zone, text)
        rule: _EveryDays | _EveryHours = _EveryDays(count, at, day)
        return Schedule(f"every {count}d {at:%H:%M}", tz, day, rule, zone)
    if len(rest) != 1:
        raise _fail(text, "'every Nh' takes no time of day")
    start = _anchor_hour(anchor, zone, text)
    return Schedule(f"every {count}h", tz, start, _EveryHours(count, start), zone)


def _anchor_day(anchor: date, zone: ZoneInfo, text: str) -> date:
    """The local date an `every Nd` schedule counts from."""
    try:
        return anchor.astimezone(zone).date() if isinstance(anchor, datetime) else anchor
    except OverflowError:
        raise _fail(text, f"anchor {anchor.isoformat()} is out of range") from None


def _anchor_hour(anchor: date, zone: ZoneInfo, text: str) -> datetime:
    """The UTC instant, on a local hour boundary, an `every Nh` schedule counts from."""
    try:
        if isinstance(anchor, datetime):
            local = anchor.astimezone(zone).replace(minute=0, second=0, microsecond=0)
            return local.astimezone(UTC)
        return _resolve(datetime.combine(anchor, time()), zone)
    except OverflowError:
        # Midnight of 0001-01-01 east of UTC, or of 9999-12-31 west of it, is no instant.
        raise _fail(text, f"anchor {anchor.isoformat()} is out of range") from None


def _parse_cron_fields(fields: list[str], text: str) -> _Cron:
    if len(fields) != 5:
        raise _fail(text, f"cron needs 5 fields (minute hour day month weekday), got {len(fields)}")
    minutes, hours, doms, months, dows = (
        _cron_field(spec, name, low, high, text)
        for spec, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True)
    )
    rule = _Cron(
        times=tuple(time(h, m) for h in sorted(hours) for m in sorted(minutes)),
        doms=doms,
        months=months,
        dows=frozenset(d % 7 for d in dows),
        dom_star=fields[2].startswith("*"),
        dow_star=fields[4].startswith("*"),
    )
    either = not (rule.dom_star or rule.dow_star)
    if not either and not any(d <= _LONGEST_MONTH[m] for m in months for d in doms):
        raise _fail(text, "the day of month never occurs in the chosen months")
    return rule


def _cron_field(spec: str, name: str, low: int, high: int, text: str) -> frozenset[int]:
    values: set[int] = set()
    for item in spec.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if not match:
            raise _fail(text, f"cron {name} {spec!r} is not a list of N, N-M, * or .../STEP")
        star, first_text, last_text, step_text = match.groups()
        step = int(step_text) if step_text else 1
        first = low if star else int(first_text)
        last = high if star or (step_text and not last_text) else int(last_text or first_text)
        for value in (first, last):
            if not low <= value <= high:
                raise _fail(text, f"cron {name} {value} is out of range {low}-{high}")
        if first > last or step < 1:
            raise _fail(text, f"cron {name} {item!r} is an empty range")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def check_schedule_name(name: str) -> str:
    """A schedule name: 1-64 letters, digits, dots, dashes or underscores."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
        raise InputError(f"invalid schedule name {name!r}: use 1-64 letters, digits, '.', '_', '-'")
    return name
