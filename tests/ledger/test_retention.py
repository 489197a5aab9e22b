from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import InputError
from ledger.retention import (
    Candidate,
    Decision,
    KeepWithin,
    RetentionPolicy,
    decide,
    parse_keep_within,
)

BERLIN = ZoneInfo("Europe/Berlin")
ZONES = [ZoneInfo(name) for name in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")]


def at(text: str) -> datetime:
    """An instant written as UTC ISO text."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def snapshots(*times: str) -> list[Candidate]:
    return [Candidate(f"s{i}", at(t)) for i, t in enumerate(times)]


def kept(decisions: list[Decision]) -> set[str]:
    return {d.id for d in decisions if d.keep}


def reasons(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in decisions}


# --- keep_last ---------------------------------------------------------------------------


def test_keep_last_keeps_the_newest_n_in_any_input_order() -> None:
    snaps = snapshots("2026-01-03 10:00", "2026-01-01 10:00", "2026-01-04 10:00", "2026-01-02")
    decisions = decide(snaps, RetentionPolicy(keep_last=2), BERLIN)
    assert kept(decisions) == {"s0", "s2"}
    assert [d.id for d in decisions] == ["s2", "s0", "s3", "s1"]
    assert reasons(decisions)["s2"] == ("last 2",)


def test_keep_last_alone_with_one_snapshot_too_many_drops_exactly_the_oldest() -> None:
    snaps = snapshots("2026-01-01", "2026-01-08", "2026-01-15", "2026-01-22")
    decisions = decide(snaps, RetentionPolicy(keep_last=3), BERLIN)
    dropped = [d for d in decisions if not d.keep]
    assert dropped == [Decision("s0", False, ("beyond keep-last 3",))]


def test_keep_last_zero_is_refused_with_one_line() -> None:
    with pytest.raises(InputError, match=r"^--keep-last must be at least 1, got 0$"):
        RetentionPolicy(keep_last=0)


# --- period buckets ----------------------------------------------------------------------


def test_keep_daily_keeps_the_newest_snapshot_of_each_day() -> None:
    snaps = snapshots(
        "2026-03-12 08:00",
        "2026-03-13 08:00",
        "2026-03-13 12:00",
        "2026-03-14 06:00",
        "2026-03-14 09:00",
        "2026-03-14 15:00",
    )
    decisions = decide(snaps, RetentionPolicy(keep_daily=2), ZoneInfo("UTC"))
    assert kept(decisions) == {"s5", "s2"}
    assert reasons(decisions)["s5"] == ("daily 2026-03-14",)
    assert reasons(decisions)["s2"] == ("daily 2026-03-13",)
    assert reasons(decisions)["s0"] == ("no rule keeps it",)


def test_keep_hourly_keeps_the_newest_snapshot_of_each_hour() -> None:
    snaps = snapshots("2026-03-14 09:05", "2026-03-14 09:55", "2026-03-14 10:10")
    decisions = decide(snaps, RetentionPolicy(keep_hourly=5), ZoneInfo("UTC"))
    assert reasons(decisions) == {
        "s2": ("hourly 2026-03-14 10:00",),
        "s1": ("hourly 2026-03-14 09:00",),
        "s0": ("no rule keeps it",),
    }


def test_keep_weekly_buckets_by_iso_week_across_a_year_boundary() -> None:
    # 2026-01-01 is a Thursday, so ISO week 2026-W01 runs from Monday 2025-12-29.
    snaps = snapshots(
        "2025-12-28 12:00",  # Sunday, 2025-W52
        "2025-12-29 12:00",  # Monday, 2026-W01
        "2026-01-03 12:00",  # Saturday, 2026-W01
        "2026-01-05 12:00",  # Monday, 2026-W02
    )
    decisions = decide(snaps, RetentionPolicy(keep_weekly=3), BERLIN)
    assert reasons(decisions) == {
        "s3": ("weekly 2026-W02",),
        "s2": ("weekly 2026-W01",),
        "s1": ("no rule keeps it",),
        "s0": ("weekly 2025-W52",),
    }


def test_keep_monthly_and_yearly_keep_the_newest_of_each_month_and_year() -> None:
    snaps = snapshots(
        "2024-06-01", "2024-11-30", "2025-02-10", "2025-12-01", "2026-01-10", "2026-01-20"
    )
    decisions = decide(snaps, RetentionPolicy(keep_monthly=2, keep_yearly=3), ZoneInfo("UTC"))
    assert reasons(decisions) == {
        "s5": ("monthly 2026-01", "yearly 2026"),
        "s4": ("no rule keeps it",),
        "s3": ("monthly 2025-12", "yearly 2025"),
        "s2": ("no rule keeps it",),
        "s1": ("yearly 2024",),
        "s0": ("no rule keeps it",),
    }


def test_a_day_is_the_operators_day_in_its_time_zone() -> None:
    # 23:30 UTC on the 14th is 00:30 on the 15th in Berlin.
    snaps = snapshots("2026-03-14 22:00", "2026-03-14 23:30")
    in_berlin = decide(snaps, RetentionPolicy(keep_daily=2), BERLIN)
    assert reasons(in_berlin) == {"s1": ("daily 2026-03-15",), "s0": ("daily 2026-03-14",)}
    in_utc = decide(snaps, RetentionPolicy(keep_daily=2), ZoneInfo("UTC"))
    assert kept(in_utc) == {"s1"}


def test_an_hour_is_the_operators_hour_in_a_half_hour_time_zone() -> None:
    # 04:10 and 04:40 UTC are 09:40 and 10:10 in Kolkata (UTC+05:30).
    snaps = snapshots("2026-03-14 04:10", "2026-03-14 04:40")
    decisions = decide(snaps, RetentionPolicy(keep_hourly=2), ZoneInfo("Asia/Kolkata"))
    assert reasons(decisions) == {
        "s1": ("hourly 2026-03-14 10:00",),
        "s0": ("hourly 2026-03-14 09:00",),
    }


# --- keep_within -------------------------------------------------------------------------


def test_keep_within_counts_back_from_the_newest_snapshot_not_from_now() -> None:
    snaps = snapshots(
        "2020-01-01 12:00", "2020-01-02 12:00", "2020-01-31 11:00", "2020-01-31 12:00"
    )
    decisions = decide(snaps, RetentionPolicy(keep_within=parse_keep_within("30d")), BERLIN)
    # Exactly 30 days before the newest is outside the span.
    assert kept(decisions) == {"s1", "s2", "s3"}
    assert reasons(decisions)["s3"] == ("within 30d",)


def test_keep_within_months_step_back_on_the_calendar() -> None:
    # A month before 31 March 12:00 (Berlin) is 28 February 12:00 (Berlin, 11:00 UTC).
    snaps = snapshots("2026-02-28 10:30", "2026-02-28 11:30", "2026-03-31 10:00")
    decisions = decide(snaps, RetentionPolicy(keep_within=KeepWithin(months=1)), BERLIN)
    assert kept(decisions) == {"s1", "s2"}


# --- combinations, protection, empty policy ----------------------------------------------


def test_a_snapshot_kept_by_two_rules_lists_both_reasons() -> None:
    snaps = snapshots("2026-03-13 12:00", "2026-03-14 12:00")
    policy = RetentionPolicy(keep_last=1, keep_daily=2, keep_within=parse_keep_within("12h"))
    decisions = decide(snaps, policy, ZoneInfo("UTC"))
    assert reasons(decisions) == {
        "s1": ("last 1", "daily 2026-03-14", "within 12h"),
        "s0": ("daily 2026-03-13",),
    }


def test_protected_snapshots_are_always_kept_and_do_not_use_up_a_count() -> None:
    snaps = [
        Candidate("old", at("2026-01-01"), protected=True),
        Candidate("mid", at("2026-01-02")),
        Candidate("new", at("2026-01-03"), protected=True),
    ]
    decisions = decide(snaps, RetentionPolicy(keep_last=1), BERLIN)
    assert reasons(decisions) == {"new": ("protected",), "mid": ("last 1",), "old": ("protected",)}


def test_an_empty_policy_keeps_everything() -> None:
    snaps = snapshots("2020-01-01", "2023-05-05", "2026-01-01")
    assert RetentionPolicy().is_empty()
    decisions = decide(snaps, RetentionPolicy(), BERLIN)
    assert kept(decisions) == {"s0", "s1", "s2"}
    assert {d.reasons for d in decisions} == {("no retention policy",)}


def test_no_snapshots_means_no_decisions() -> None:
    assert decide([], RetentionPolicy(keep_last=1, keep_within=KeepWithin(days=1)), BERLIN) == []


def test_a_naive_taken_at_is_refused() -> None:
    with pytest.raises(ValueError, match="time-zone aware"):
        Candidate("s", datetime(2026, 1, 1))


# --- parse_keep_within -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("30d", KeepWithin(days=30)),
        ("12h", KeepWithin(hours=12)),
        ("2w", KeepWithin(weeks=2)),
        ("1y2m", KeepWithin(years=1, months=2)),
        (" 1y2m3w4d5h ", KeepWithin(1, 2, 3, 4, 5)),
        ("5h1d", KeepWithin(days=1, hours=5)),
    ],
)
def test_parse_keep_within_reads_restic_like_spans(text: str, span: KeepWithin) -> None:
    assert parse_keep_within(text) == span


def test_a_span_prints_in_canonical_unit_order() -> None:
    assert str(parse_keep_within("5h1y")) == "1y5h"


@pytest.mark.parametrize(
    "text", ["", "30", "d", "30x", "3.5d", "-1d", "1d1d", "30 d", "0d", "0y0h", "1M", "1d!"]
)
def test_parse_keep_within_refuses_bad_input_with_one_line(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_keep_within(text)
    assert "keep-within" in str(caught.value)
    assert "\n" not in str(caught.value)


# --- the property: equal to a straightforward reference ----------------------------------

# Instants near year ends, month ends, a leap day and daylight-saving changes, where buckets
# and calendar spans are easiest to get wrong.
ANCHORS = [
    datetime(2023, 12, 31, 22, tzinfo=UTC),
    datetime(2024, 2, 29, 12, tzinfo=UTC),
    datetime(2025, 3, 31, 1, tzinfo=UTC),
    datetime(2025, 10, 26, 1, tzinfo=UTC),
    datetime(2025, 11, 2, 6, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
]
BUCKET_FORMATS: dict[str, str] = {
    "keep_hourly": "%Y-%m-%d %H",
    "keep_daily": "%Y-%m-%d",
    "keep_weekly": "%G-%V",
    "keep_monthly": "%Y-%m",
    "keep_yearly": "%Y",
}


def month_back(local: datetime, months: int) -> datetime:
    """The same wall time `months` calendar months earlier, on the month's last day if need be."""
    year, month = local.year, local.month
    for _ in range(months):
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    next_first = datetime(year + (month == 12), month % 12 + 1, 1)
    last_day = (next_first - timedelta(days=1)).day
    return local.replace(year=year, month=month, day=min(local.day, last_day))


def bucket_of(fmt: str, tz: ZoneInfo) -> Callable[[Candidate], str]:
    return lambda s: s.taken_at.astimezone(tz).strftime(fmt)


def reference_kept(snaps: list[Candidate], policy: RetentionPolicy, tz: ZoneInfo) -> set[str]:
    if policy.is_empty():
        return {s.id for s in snaps}
    result = {s.id for s in snaps if s.protected}
    pool = sorted(
        (s for s in snaps if not s.protected), key=lambda s: (s.taken_at, s.id), reverse=True
    )
    if policy.keep_last is not None:
        result |= {s.id for s in pool[: policy.keep_last]}
    for name, fmt in BUCKET_FORMATS.items():
        count = getattr(policy, name)
        if count is None:
            continue
        groups = itertools.groupby(pool, key=bucket_of(fmt, tz))
        for _, group in itertools.islice(groups, count):
            result.add(next(group).id)
    span = policy.keep_within
    if span is not None and pool:
        naive = pool[0].taken_at.astimezone(tz).replace(tzinfo=None)
        naive = month_back(naive, 12 * span.years + span.months)
        naive -= timedelta(days=span.days) + timedelta(weeks=span.weeks)
        cutoff = naive.replace(tzinfo=tz).astimezone(UTC) - timedelta(hours=span.hours)
        result |= {s.id for s in pool if s.taken_at > cutoff}
    return result


@st.composite
def timelines(draw: st.DrawFn) -> list[Candidate]:
    """Up to 40 snapshots on a grid of minutes, hours or days, around a tricky instant."""
    horizon = timedelta(days=draw(st.sampled_from([2, 10, 60, 3 * 365])))
    step = timedelta(minutes=draw(st.sampled_from([1, 30, 60, 24 * 60])))
    start = draw(st.sampled_from(ANCHORS)) - horizon * draw(st.sampled_from([0, 0.5, 1]))
    steps = draw(st.lists(st.integers(0, horizon // step), max_size=40, unique=True))
    flags = draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    return [
        Candidate(f"s{i}", start + n * step, protected=flag)
        for i, (n, flag) in enumerate(zip(steps, flags, strict=True))
    ]


# Rules are off more often than on, so one rule's mistakes are not hidden by the others.
counts = st.sampled_from([None, None, None, None, 1, 2, 3, 6])
spans = st.builds(
    KeepWithin,
    years=st.sampled_from([0, 0, 0, 0, 1]),
    months=st.sampled_from([0, 0, 0, 1, 2, 13]),
    weeks=st.sampled_from([0, 0, 0, 1, 2]),
    days=st.sampled_from([0, 0, 0, 1, 3, 30]),
    hours=st.sampled_from([0, 0, 1, 6, 13, 36]),
)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.sampled_from([None, None]) | spans,
)


@settings(max_examples=1000, deadline=None)
@given(snaps=timelines(), policy=policies, tz=st.sampled_from(ZONES))
def test_kept_set_equals_the_reference_and_every_snapshot_is_decided_once(
    snaps: list[Candidate], policy: RetentionPolicy, tz: ZoneInfo
) -> None:
    decisions = decide(snaps, policy, tz)
    assert Counter(d.id for d in decisions) == Counter(s.id for s in snaps)
    assert all(d.reasons for d in decisions)
    assert kept(decisions) == reference_kept(snaps, policy, tz)


@given(snaps=timelines(), n=st.integers(1, 10))
def test_keep_last_alone_never_keeps_more_than_n_unprotected(
    snaps: list[Candidate], n: int
) -> None:
    decisions = decide(snaps, RetentionPolicy(keep_last=n), BERLIN)
    protected = {s.id for s in snaps if s.protected}
    kept_unprotected = kept(decisions) - protected
    assert len(kept_unprotected) == min(n, len(snaps) - len(protected))
    assert protected <= kept(decisions)
