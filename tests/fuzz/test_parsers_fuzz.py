"""Fuzzing the parsers of operator input: schedules, cron, retention rules, spans and sizes.

Each parser either returns a value or raises the project's InputError with a one-line
message; a schedule it returns can also plan its next run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ledger.errors import InputError
from ledger.retention import parse_keep_within
from ledger.rules import COUNT_RULES, rules_from
from ledger.schedule import check_schedule_name, parse_cron, parse_schedule
from ledger.sizes import parse_size
from tests.fuzz.tally import fuzz, ran

NOW = dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC)
ARABIC_TIME = "\u0661\u0662:\u0663\u0660"  # 12:30 in Arabic-Indic digits
ZONES = st.one_of(
    st.sampled_from(["UTC", "Europe/Berlin", "Asia/Tokyo", "America/St_Johns", "Pacific/Apia"]),
    st.sampled_from(["", "America", "Europe/", "../etc", "UTC\x00", "Factory", "zone.tab"]),
    st.text(max_size=8),
    st.text(alphabet="a", min_size=250, max_size=300),
)
WORDS = st.one_of(
    st.sampled_from(["every", "daily", "monthly", "cron", "mon", "wed,fri", "sunday", "mon,,tue"]),
    st.sampled_from(
        ["22:00", "23:59", "24:00", "9:5", "00:60", "7:30", "²", ARABIC_TIME, "\u0663"]
    ),
    st.sampled_from(["10d", "6h", "0d", "99999h", "1d", "31", "0", "32", "*", "*/15", "1-5"]),
    st.sampled_from(["5-1", "0-59/0", "1,2,3", "7", "2/3", "*/99", "-1", "L", "?", "60"]),
    st.text(alphabet="0123456789*/,-:dhMONTUEWDFRISA ", max_size=6),
    st.text(max_size=4),
)
SCHEDULES = st.lists(WORDS, max_size=7).map(" ".join)
ANCHORS = st.one_of(
    st.none(),
    st.dates(),
    st.sampled_from([dt.date.min, dt.date.max]),
    st.datetimes(timezones=st.just(dt.UTC)),
)


def one_line(err: InputError) -> None:
    """An input error reads as one line."""
    assert err.message and "\n" not in err.message and "\r" not in err.message, repr(err.message)


def parses_or_refuses(parse: Callable[[], Any]) -> Any:
    """Return what `parse` returns, or None when it raised a one-line InputError."""
    try:
        return parse()
    except InputError as err:
        one_line(err)
        return None


@fuzz(250)
@given(SCHEDULES, ZONES, ANCHORS)
@example("monthly ² 03:00", "UTC", None)  # a digit str.isdigit() knows but int() does not
@example("every 1h", "Asia/Tokyo", dt.date.min)  # an anchor whose start is before year 1
@example("daily 03:00", "America", None)  # a folder of the zone database, not a zone
@example("daily 03:00", "a" * 300, None)  # a zone name longer than a file name may be
def test_a_schedule_parses_and_plans_or_is_refused_in_one_line(
    text: str, tz: str, anchor: dt.date | None
) -> None:
    ran("parser: schedules")
    schedule = parses_or_refuses(lambda: parse_schedule(text, tz, anchor))
    if schedule is not None:
        again = parse_schedule(schedule.describe(), schedule.tz, schedule.anchor)
        assert again.text == schedule.text
        following = parses_or_refuses(lambda: schedule.next_after(NOW))
        assert following is None or following > NOW


@fuzz(150)
@given(st.lists(WORDS, max_size=6).map(" ".join), ZONES)
def test_a_cron_expression_parses_or_is_refused_in_one_line(expr: str, tz: str) -> None:
    ran("parser: cron")
    schedule = parses_or_refuses(lambda: parse_cron(expr, tz))
    if schedule is not None:
        following = parses_or_refuses(lambda: schedule.next_after(NOW))
        assert following is None or following > NOW


SPAN_TEXT = st.one_of(
    st.text(alphabet="0123456789ymwdh ", max_size=12),
    st.text(max_size=8),
    st.sampled_from(["30d", "1y2m", "0d", "1d1d", "999999999y", "\u0661\u0662d", "d", " 3h "]),
)


@fuzz(150)
@given(SPAN_TEXT)
def test_a_keep_within_span_parses_and_reaches_back_or_is_refused(text: str) -> None:
    ran("parser: keep-within spans")
    span = parses_or_refuses(lambda: parse_keep_within(text))
    if span is not None:
        assert parse_keep_within(str(span)) == span
        cutoff = span.cutoff(NOW, dt.UTC)
        assert cutoff is None or cutoff < NOW


RULE_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(),
    st.text(max_size=6),
    SPAN_TEXT,
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
)
RULE_KEYS = st.sampled_from([*COUNT_RULES, "keep_within", "tz", "other"])


@fuzz(150)
@given(st.dictionaries(RULE_KEYS, RULE_VALUES | ZONES, max_size=5))
@example({"tz": "America"})
@example({"keep_last": 1, "tz": "a" * 300})
def test_retention_rules_are_checked_or_refused_in_one_line(args: dict[str, Any]) -> None:
    ran("parser: retention rules")
    rules = parses_or_refuses(lambda: rules_from(args, "UTC"))
    if rules is not None:
        for count in (rules.keep_last, rules.keep_daily, rules.keep_yearly):
            assert count is None or (isinstance(count, int) and count >= 1)


SIZE_TEXT = st.one_of(
    st.from_regex(r"\s?[0-9]{0,25}(\.[0-9]{0,32})?\s?[kKmMgGtTpPxX]?[iI]?[bB]?\s?", fullmatch=True),
    st.text(max_size=10),
    st.sampled_from(["1e5", "\u0661\u0662K", "-1", "1.5K", "0.1", "1" * 31, "nan", "1__0", "0x10"]),
)


@fuzz(200)
@given(SIZE_TEXT)
def test_a_size_parses_to_whole_bytes_or_is_refused_in_one_line(text: str) -> None:
    ran("parser: sizes")
    size = parses_or_refuses(lambda: parse_size(text))
    if size is not None:
        assert isinstance(size, int) and size >= 0


@fuzz(100)
@given(st.text(max_size=70))
def test_a_schedule_name_is_accepted_as_is_or_refused_in_one_line(name: str) -> None:
    ran("parser: schedule names")
    checked = parses_or_refuses(lambda: check_schedule_name(name))
    assert checked is None or checked == name
