from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger.errors import InputError
from ledger.schedule import Schedule, parse_cron, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def walk(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    runs, instant = [], start
    for _ in range(count):
        instant = schedule.next_after(instant)
        runs.append(instant)
    return runs


def test_weekly_wednesday_over_eight_weeks_runs_eight_times_at_wednesday_2200_local() -> None:
    schedule = parse_schedule("wed 22:00", "Europe/Berlin")
    start = local(2026, 3, 1)  # eight weeks spanning the spring DST change
    runs = schedule.runs_between(start, start + timedelta(weeks=8))
    assert len(runs) == 8
    for run in runs:
        wall = run.astimezone(BERLIN)
        assert (wall.weekday(), wall.hour, wall.minute) == (2, 22, 0)
        assert run.tzinfo is UTC
    assert runs == walk(schedule, start, 8)
    assert {b - a for a, b in pairwise(runs)} == {
        timedelta(weeks=1),
        timedelta(weeks=1, hours=-1),
    }


def test_several_weekdays_run_on_each_listed_day() -> None:
    schedule = parse_schedule("Mon,THU 02:30", "UTC")
    assert schedule.describe() == "mon,thu 02:30"
    assert walk(schedule, utc(2026, 1, 1), 4) == [
        utc(2026, 1, 1, 2, 30),
        utc(2026, 1, 5, 2, 30),
        utc(2026, 1, 8, 2, 30),
        utc(2026, 1, 12, 2, 30),
    ]


def test_daily_runs_every_day_and_strictly_after_the_instant() -> None:
    schedule = parse_schedule("daily 03:00", "UTC")
    assert schedule.next_after(utc(2026, 1, 1, 3, 0)) == utc(2026, 1, 2, 3, 0)
    assert schedule.next_after(utc(2026, 1, 1, 2, 59)) == utc(2026, 1, 1, 3, 0)
    assert walk(schedule, utc(2026, 1, 30, 12), 2)[-1] == utc(2026, 2, 1, 3, 0)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2026, 2, 1), utc(2026, 2, 28, 3)),
        (utc(2028, 2, 1), utc(2028, 2, 29, 3)),
        (utc(2026, 4, 1), utc(2026, 4, 30, 3)),
        (utc(2026, 3, 1), utc(2026, 3, 31, 3)),
    ],
)
def test_monthly_31_runs_on_the_last_day_of_shorter_months(
    after: datetime, expected: datetime
) -> None:
    assert parse_schedule("monthly 31 03:00", "UTC").next_after(after) == expected


def test_monthly_1_runs_on_the_first_of_each_month() -> None:
    schedule = parse_schedule("monthly 1 03:00", "UTC")
    assert walk(schedule, utc(2026, 11, 15), 3) == [
        utc(2026, 12, 1, 3),
        utc(2027, 1, 1, 3),
        utc(2027, 2, 1, 3),
    ]


def test_every_10d_is_a_true_interval_across_a_month_boundary() -> None:
    schedule = parse_schedule("every 10d 02:00", "UTC", anchor=date(2026, 1, 25))
    assert walk(schedule, utc(2026, 1, 25), 3) == [
        utc(2026, 1, 25, 2),
        utc(2026, 2, 4, 2),
        utc(2026, 2, 14, 2),
    ]


def test_every_10d_takes_the_anchor_date_from_an_aware_instant_in_the_schedule_zone() -> None:
    anchor = utc(2026, 1, 24, 23, 30)  # already Jan 25 in Berlin
    schedule = parse_schedule("every 10d 02:00", "Europe/Berlin", anchor=anchor)
    assert schedule.anchor == date(2026, 1, 25)
    assert schedule.next_after(anchor) == local(2026, 1, 25, 2).astimezone(UTC)


def test_every_6h_counts_elapsed_hours_from_the_anchor_hour_boundary() -> None:
    schedule = parse_schedule("every 6h", "UTC", anchor=utc(2026, 1, 1, 9, 41))
    assert schedule.anchor == utc(2026, 1, 1, 9)
    assert walk(schedule, utc(2026, 1, 1, 9, 41), 3) == [
        utc(2026, 1, 1, 15),
        utc(2026, 1, 1, 21),
        utc(2026, 1, 2, 3),
    ]
    assert schedule.next_after(utc(2025, 12, 31)) == utc(2025, 12, 31, 3)


def test_every_forms_need_an_anchor() -> None:
    with pytest.raises(InputError, match="anchor"):
        parse_schedule("every 6h", "UTC")


def test_cron_wednesday_2200_equals_the_weekly_form() -> None:
    cron = parse_cron("0 22 * * 3", "Europe/Berlin")
    weekly = parse_schedule("wed 22:00", "Europe/Berlin")
    start = local(2026, 1, 1)
    assert cron.runs_between(start, start + timedelta(days=400)) == weekly.runs_between(
        start, start + timedelta(days=400)
    )
    assert cron.describe() == "cron 0 22 * * 3"


def test_cron_lists_ranges_and_steps() -> None:
    schedule = parse_cron("*/20 9-10,17 * * 1-5", "UTC")
    runs = schedule.runs_between(utc(2026, 1, 2), utc(2026, 1, 5, 10, 30))  # Fri .. Mon
    friday = [utc(2026, 1, 2, h, m) for h in (9, 10, 17) for m in (0, 20, 40)]
    monday = [utc(2026, 1, 5, 9, m) for m in (0, 20, 40)] + [utc(2026, 1, 5, 10, 0)]
    monday.append(utc(2026, 1, 5, 10, 20))
    assert runs == friday + monday


def test_cron_step_from_a_start_value_runs_to_the_field_maximum() -> None:
    schedule = parse_cron("0 5/8 * * *", "UTC")
    assert schedule.runs_between(utc(2026, 1, 1), utc(2026, 1, 2)) == [
        utc(2026, 1, 1, 5),
        utc(2026, 1, 1, 13),
        utc(2026, 1, 1, 21),
    ]


def test_cron_day_of_month_and_day_of_week_are_ored_when_both_restricted() -> None:
    schedule = parse_cron("0 0 13 * 5", "UTC")  # the 13th, or any Friday
    days = [r.date() for r in schedule.runs_between(utc(2026, 2, 1), utc(2026, 3, 1))]
    assert days == [date(2026, 2, d) for d in (6, 13, 20, 27)]
    days = [r.date() for r in schedule.runs_between(utc(2026, 3, 1), utc(2026, 3, 31))]
    assert days == [date(2026, 3, d) for d in (6, 13, 20, 27)]
    days = [r.date() for r in schedule.runs_between(utc(2026, 4, 1), utc(2026, 4, 30))]
    assert days == [date(2026, 4, d) for d in (3, 10, 13, 17, 24)]


def test_cron_day_fields_are_anded_when_one_starts_with_a_star() -> None:
    schedule = parse_cron("0 0 */2 * 5", "UTC")  # odd days that are Fridays
    days = [r.date() for r in schedule.runs_between(utc(2026, 4, 1), utc(2026, 4, 30))]
    assert days == [date(2026, 4, 3), date(2026, 4, 17)]


def test_cron_sunday_is_0_or_7() -> None:
    assert parse_cron("0 0 * * 7", "UTC").next_after(utc(2026, 1, 1)) == utc(2026, 1, 4)
    assert parse_cron("0 0 * * 0", "UTC").next_after(utc(2026, 1, 1)) == utc(2026, 1, 4)


def test_dst_spring_forward_runs_a_missing_0230_once_shifted_by_the_gap() -> None:
    schedule = parse_schedule("daily 02:30", "Europe/Berlin")
    runs = schedule.runs_between(local(2026, 3, 29, 0), local(2026, 3, 30, 0))
    assert runs == [utc(2026, 3, 29, 1, 30)]
    assert runs[0].astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"
    assert schedule.next_after(local(2026, 3, 28, 12)) == runs[0]


def test_dst_autumn_fold_runs_a_doubled_0230_once_at_its_first_occurrence() -> None:
    schedule = parse_schedule("daily 02:30", "Europe/Berlin")
    runs = schedule.runs_between(local(2026, 10, 25, 0), local(2026, 10, 26, 0))
    assert runs == [utc(2026, 10, 25, 0, 30)]
    assert runs[0].astimezone(BERLIN).strftime("%H:%M %Z") == "02:30 CEST"
    assert schedule.next_after(runs[0]) == utc(2026, 10, 26, 1, 30)


def test_every_minute_cron_in_the_fold_runs_each_wall_clock_minute_once() -> None:
    schedule = parse_cron("* 2 * * *", "Europe/Berlin")
    assert len(schedule.runs_between(local(2026, 10, 25, 0), local(2026, 10, 26, 0))) == 60
    assert len(schedule.runs_between(local(2026, 3, 29, 0), local(2026, 3, 30, 0))) == 60


def test_runs_between_returns_every_slot_missed_during_an_outage() -> None:
    schedule = parse_schedule("daily 03:00", "Europe/Berlin")
    last_seen, back_up = local(2026, 5, 1, 12), local(2026, 5, 4, 9)
    missed = schedule.runs_between(last_seen, back_up)
    assert missed == [local(2026, 5, d, 3).astimezone(UTC) for d in (2, 3, 4)]
    assert schedule.runs_between(back_up, back_up) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("wed 25:00", "out of range"),
        ("wed 22:60", "out of range"),
        ("wed 2200", "not HH:MM"),
        ("funday 10:00", "unknown weekday 'funday'"),
        ("monthly 0 03:00", "day of month 0"),
        ("monthly 32 03:00", "day of month 32"),
        ("every 0d", "at least 1"),
        ("every 10d", "every Nd HH:MM"),
        ("every 6h 02:00", "no time of day"),
        ("every 6w", "every Nd HH:MM"),
        ("daily", "daily HH:MM"),
        ("", "empty schedule"),
        ("cron 0 22 * *", "5 fields"),
        ("cron 0 24 * * *", "hour 24 is out of range 0-23"),
        ("cron 0 0 30 2 *", "never occurs"),
        ("cron 0 0 5-1 * *", "empty range"),
        ("cron 0 0 ? * *", "is not a list"),
    ],
)
def test_bad_schedules_are_refused_with_one_line_naming_the_problem(
    text: str, problem: str
) -> None:
    with pytest.raises(InputError, match=problem) as caught:
        parse_schedule(text, "UTC", anchor=date(2026, 1, 1))
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_cron_with_four_fields_is_refused() -> None:
    with pytest.raises(InputError, match=r"cron needs 5 fields .*got 4"):
        parse_cron("0 22 * *", "UTC")


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd"])
def test_unknown_time_zone_is_refused(tz: str) -> None:
    with pytest.raises(InputError, match="unknown time zone"):
        parse_schedule("daily 03:00", tz)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(InputError, match="no time zone"):
        parse_schedule("daily 03:00", "UTC").next_after(datetime(2026, 1, 1))


def test_next_after_for_a_rare_cron_date_returns_quickly() -> None:
    schedule = parse_cron("0 0 29 2 *", "UTC")
    assert schedule.next_after(utc(2097, 3, 1)) == utc(2104, 2, 29)


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
TIMES = st.builds("{:02d}:{:02d}".format, st.integers(0, 23), st.sampled_from([0, 15, 30, 59]))
DAYS = st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1)
CRON = st.builds(
    "{} {} {} {} {}".format,
    st.sampled_from(["0", "*/15", "5,35", "0-10/5"]),
    st.sampled_from(["*", "2", "1-3", "22", "*/6"]),
    st.sampled_from(["*", "1", "31", "1-7", "*/10"]),
    st.sampled_from(["*", "3", "2,4", "*/3"]),
    st.sampled_from(["*", "0", "1-5", "3,6"]),
)
TEXTS = st.one_of(
    st.builds("{} {}".format, DAYS.map(",".join), TIMES),
    st.builds("daily {}".format, TIMES),
    st.builds("monthly {} {}".format, st.integers(1, 31), TIMES),
    st.builds("every {}d {}".format, st.integers(1, 40), TIMES),
    st.builds("every {}h".format, st.integers(1, 48)),
    CRON.map("cron {}".format),
)
INSTANTS = st.datetimes(datetime(2000, 1, 1), datetime(2060, 1, 1), timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(text=TEXTS, tz=st.sampled_from(ZONES), anchor=INSTANTS, instant=INSTANTS)
def test_next_after_is_later_and_is_the_only_run_up_to_itself(
    text: str, tz: str, anchor: datetime, instant: datetime
) -> None:
    try:
        schedule = parse_schedule(text, tz, anchor=anchor)
    except InputError as refused:
        assert "never occurs" in refused.message, refused.message
        assume(False)
    upcoming = schedule.next_after(instant)
    assert upcoming > instant
    assert upcoming.tzinfo is UTC
    assert schedule.runs_between(instant, upcoming) == [upcoming]
    assert parse_schedule(schedule.describe(), tz, anchor=schedule.anchor) == schedule
