"""Cron parsing and its systemd OnCalendar / launchd StartCalendarInterval forms, cross-checked.

The reference for "when does it fire" is `CronSchedule.matches` (pinned by hand-written cases below);
OnCalendar lines are checked against `systemd-analyze calendar` itself, and StartCalendarInterval
entries against launchd's documented rules (missing key = any; Day and Weekday in one dict = either).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maestro_py import cron
from maestro_py.cron import CronError

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
BASE = datetime(2026, 1, 1, 0, 0)


# -- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("expr, field, expected", [
    ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
    ("5-50/10 * * * *", "minutes", {5, 15, 25, 35, 45}),
    ("7/20 * * * *", "minutes", {7, 27, 47}),
    ("0,30 * * * *", "minutes", {0, 30}),
    ("1,2-4,10-20/5 * * * *", "minutes", {1, 2, 3, 4, 10, 15, 20}),
    ("* 9-17 * * *", "hours", {9, 10, 11, 12, 13, 14, 15, 16, 17}),
    ("* * * jan,MAR,dec * ", "months", {1, 3, 12}),
    ("* * * */3 *", "months", {1, 4, 7, 10}),
    ("* * * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
    ("* * * * 7", "weekdays", {0}),
    ("* * * * 5-7", "weekdays", {5, 6, 0}),
    ("* * * * fri-sun", "weekdays", {5, 6, 0}),
    ("* * * * Sun,sat", "weekdays", {0, 6}),
    ("* * 1,15 * *", "days", {1, 15}),
    ("* * */10 * *", "days", {1, 11, 21, 31}),
])
def test_fields_expand(expr: str, field: str, expected: set[int]) -> None:
    assert getattr(cron.parse(expr), field) == frozenset(expected)


@pytest.mark.parametrize("expr", ["* * * * *", "*/1 * * * *", "0-59 * * * *", "* 0-23 * 1-12 0-7"])
def test_full_ranges_are_unrestricted(expr: str) -> None:
    s = cron.parse(expr)
    assert (s.minutes is None or s.minutes == frozenset({0})) and s.hours is None and s.months is None
    assert s.weekdays is None and s.days is None


def test_day_rule_follows_vixie_cron() -> None:
    both = cron.parse("0 0 1 * 1")
    assert both.either_day and both.days == {1} and both.weekdays == {1}
    starred = cron.parse("0 0 */2 * 1")  # day-of-month starts with '*': AND
    assert not starred.either_day and starred.days == frozenset(range(1, 32, 2))
    every_day = cron.parse("0 0 1-31 * 1")  # "any day OR Monday" is any day
    assert every_day.days is None and every_day.weekdays is None and not every_day.either_day


@pytest.mark.parametrize("expr, when, fires", [
    ("0 8 * * 1", datetime(2026, 11, 23, 8, 0), True),   # a Monday
    ("0 8 * * 1", datetime(2026, 11, 24, 8, 0), False),
    ("0 8 * * 1", datetime(2026, 11, 23, 8, 1), False),
    ("0 8 1 * 1", datetime(2026, 12, 1, 8, 0), True),    # the 1st, a Tuesday: OR
    ("0 8 1 * 1", datetime(2026, 12, 7, 8, 0), True),    # a Monday, not the 1st: OR
    ("0 8 1 * 1", datetime(2026, 12, 8, 8, 0), False),
    ("0 8 */2 * 1", datetime(2026, 12, 7, 8, 0), True),  # odd day AND Monday
    ("0 8 */2 * 1", datetime(2026, 12, 14, 8, 0), False),
    ("0 8 */2 * 1", datetime(2026, 12, 9, 8, 0), False),
    ("*/15 * * * *", datetime(2026, 5, 5, 13, 45), True),
    ("*/15 * * * *", datetime(2026, 5, 5, 13, 46), False),
    ("0 0 * * 7", datetime(2026, 11, 22, 0, 0), True),   # a Sunday
    ("0 0 29 2 *", datetime(2028, 2, 29, 0, 0), True),
])
def test_matches(expr: str, when: datetime, fires: bool) -> None:
    assert cron.parse(expr).matches(when) is fires


@pytest.mark.parametrize("expr, fragment", [
    ("* * * *", "expected 5 fields"),
    ("* * * * * *", "expected 5 fields"),
    ("60 * * * *", "minute field '60': 60 is out of range 0-59"),
    ("* 24 * * *", "out of range 0-23"),
    ("* * 0 * *", "out of range 1-31"),
    ("* * * 13 *", "out of range 1-12"),
    ("* * * * 8", "out of range 0-7"),
    ("*/0 * * * *", "step '0' must be a whole number >= 1"),
    ("*/x * * * *", "step 'x'"),
    ("10-5 * * * *", "runs backwards"),
    ("1,,2 * * * *", "empty list item"),
    ("* * * foo *", "'foo' is not a number (names: jan-dec)"),
    ("* * * * funday", "(names: sun-sat)"),
    ("mon * * * *", "'mon' is not a number"),
    ("-1 * * * *", "not a number"),
    ("0 0 31 2 *", "never matches: day-of-month 31 does not occur in month(s) 2"),
    ("0 0 30,31 2 *", "never matches"),
])
def test_invalid_expressions_say_why(expr: str, fragment: str) -> None:
    with pytest.raises(CronError) as info:
        cron.parse(expr)
    assert fragment in str(info.value)


def test_a_day_that_exists_in_some_chosen_month_is_accepted() -> None:
    assert cron.parse("0 0 31 1,2 *").days == {31}
    assert cron.parse("0 0 31 2 1").either_day  # OR: Mondays in February still fire


# -- systemd ------------------------------------------------------------------------


@pytest.mark.parametrize("expr, expected", [
    ("*/15 * * * *", ["*-*-* *:00/15:00"]),
    ("0 8 * * 1", ["Mon *-*-* 08:00:00"]),
    ("* * * * *", ["*-*-* *:*:00"]),
    ("30 2 * * *", ["*-*-* 02:30:00"]),
    ("0,30 */4 * * *", ["*-*-* 00/4:00,30:00"]),
    ("5-50/10 9-17 * * mon-fri", ["Mon..Fri *-*-* 09..17:05..45/10:00"]),
    ("0 0 1 1 *", ["*-01-01 00:00:00"]),
    ("0 0 * jan-mar,dec *", ["*-01..03,12-* 00:00:00"]),
    ("0 0 * * 0,6", ["Sat,Sun *-*-* 00:00:00"]),
    ("0 0 * * fri-sun", ["Fri..Sun *-*-* 00:00:00"]),
    ("0 0 * * 1,3,5", ["Mon,Wed,Fri *-*-* 00:00:00"]),
    ("0 12 1 * 1", ["Mon *-*-* 12:00:00", "*-*-01 12:00:00"]),  # cron's OR: two lines
    ("0 12 1,15 * sat,sun", ["Sat,Sun *-*-* 12:00:00", "*-*-01,15 12:00:00"]),
    ("0 12 */2 * 1", ["Mon *-*-01/2 12:00:00"]),  # AND, which systemd says in one line
    ("0 12 1-31 * 1", ["*-*-* 12:00:00"]),
    ("0 0 */10 * *", ["*-*-01/10 00:00:00"]),
    ("1,2,3,7 * * * *", ["*-*-* *:01..03,07:00"]),
])
def test_oncalendar(expr: str, expected: list[str]) -> None:
    assert cron.to_oncalendar(expr) == expected


def _analyze_next(line: str, count: int) -> list[datetime]:
    """The next `count` elapses after BASE, according to systemd itself (in UTC)."""
    out = subprocess.run(
        [SYSTEMD_ANALYZE or "systemd-analyze", "calendar", f"--iterations={count}",
         f"--base-time={BASE:%Y-%m-%d %H:%M:%S} UTC", line],
        capture_output=True, text=True, env={**os.environ, "TZ": "UTC"}, check=True,
    ).stdout
    assert "Normalized form:" in out, out
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", out)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in stamps]


def _cron_next(s: cron.CronSchedule, count: int) -> list[datetime]:
    """The next `count` firings after BASE by brute force over `matches` (day first, then the clock)."""
    hours = sorted(s.hours) if s.hours is not None else list(range(24))
    minutes = sorted(s.minutes) if s.minutes is not None else list(range(60))
    found: list[datetime] = []
    day = BASE
    while len(found) < count:
        if s.matches(day.replace(hour=hours[0], minute=minutes[0])):
            for h in hours:
                for m in minutes:
                    when = day.replace(hour=h, minute=m)
                    if when > BASE and s.matches(when):
                        found.append(when)
        day += timedelta(days=1)
    return found[:count]


def _merged_next(lines: list[str], count: int) -> list[datetime]:
    return sorted({t for line in lines for t in _analyze_next(line, count)})[:count]


CROSS_CHECKED = [
    "*/15 * * * *", "0 8 * * 1", "0,30 */4 * * *", "5-50/10 9-17 * * mon-fri", "0 0 1 1 *",
    "0 0 * jan-mar,dec *", "0 0 * * 0,6", "0 0 * * fri-sun", "0 12 1 * 1", "0 12 1,15 * sat,sun",
    "0 12 */2 * 1", "0 12 1-31 * 1", "0 0 */10 * *", "59 23 31 * *", "0 0 29 2 *", "15 6 * 2 5",
    "0 9 13 * 5", "*/7 */5 */3 */2 *", "0 0 31 1,2 *",
]


@needs_systemd
@pytest.mark.parametrize("expr", CROSS_CHECKED)
def test_oncalendar_fires_when_cron_does(expr: str) -> None:
    lines = cron.to_oncalendar(expr)
    assert _merged_next(lines, 12) == _cron_next(cron.parse(expr), 12)


# -- launchd ------------------------------------------------------------------------


@pytest.mark.parametrize("expr, expected", [
    ("0 8 * * 1", {"Minute": 0, "Hour": 8, "Weekday": 1}),
    ("* * * * *", {}),
    ("30 2 * * *", {"Minute": 30, "Hour": 2}),
    ("0 0 1 1 *", {"Minute": 0, "Hour": 0, "Day": 1, "Month": 1}),
    ("*/15 * * * *", [{"Minute": 0}, {"Minute": 15}, {"Minute": 30}, {"Minute": 45}]),
    ("0 9,17 * * *", [{"Hour": 9, "Minute": 0}, {"Hour": 17, "Minute": 0}]),
    ("0 0 * * 7", {"Minute": 0, "Hour": 0, "Weekday": 0}),
    ("0 12 1 * 1", [{"Day": 1, "Hour": 12, "Minute": 0}, {"Weekday": 1, "Hour": 12, "Minute": 0}]),
    ("0 12 1-31 * 1", {"Hour": 12, "Minute": 0}),
])
def test_calendar_intervals(expr: str, expected: object) -> None:
    assert cron.to_calendar_intervals(expr) == expected


def test_a_large_expansion_is_counted_exactly() -> None:
    entries = cron.to_calendar_intervals("*/10 9-17 * * mon-fri")
    assert isinstance(entries, list) and len(entries) == 6 * 9 * 5
    assert entries[0] == {"Weekday": 1, "Hour": 9, "Minute": 0}


@pytest.mark.parametrize("expr, fragment", [
    ("0 12 */2 * 1", "a launchd entry with both Day and Weekday fires when either matches"),
    ("*/2 9-17 * * mon-fri", "expands to 1350 launchd StartCalendarInterval entries (limit 500)"),
    ("*/2 */2 * * *", "expands to 360"),  # fine at 500, refused at a lower limit below
])
def test_launchd_refusals(expr: str, fragment: str) -> None:
    limit = 100 if "360" in fragment else cron.LAUNCHD_LIMIT
    with pytest.raises(CronError) as info:
        cron.to_calendar_intervals(expr, limit=limit)
    assert fragment in str(info.value)


def _launchd(entries: object) -> Callable[[datetime], bool]:
    """launchd's rule as a predicate: any entry whose keys all match (a missing key matches anything).

    launchd ORs Day and Weekday inside one entry; the generator never puts both in one entry.
    """
    items = entries if isinstance(entries, list) else [entries]
    groups: dict[tuple[str, ...], set[tuple[int, ...]]] = {}
    for entry in items:
        assert isinstance(entry, dict) and not {"Day", "Weekday"} <= set(entry)
        keys = tuple(sorted(entry))
        groups.setdefault(keys, set()).add(tuple(entry[k] for k in keys))

    def fires(when: datetime) -> bool:
        now = {"Minute": when.minute, "Hour": when.hour, "Day": when.day, "Month": when.month,
               "Weekday": when.isoweekday() % 7}
        return any(tuple(now[k] for k in keys) in combos for keys, combos in groups.items())

    return fires


def _sample_minutes() -> Iterator[datetime]:
    """Every minute of 9 days spread over a leap year's months (covers weekdays, month ends, Feb 29)."""
    for start in (datetime(2028, 1, 29), datetime(2028, 2, 27), datetime(2028, 12, 30)):
        for minute in range(3 * 24 * 60):
            yield start + timedelta(minutes=minute)


@pytest.mark.parametrize("expr", [e for e in CROSS_CHECKED if e != "0 12 */2 * 1"])
def test_calendar_intervals_fire_when_cron_does(expr: str) -> None:
    s = cron.parse(expr)
    fires = _launchd(cron.to_calendar_intervals(s, limit=5000))
    mismatches = [t for t in _sample_minutes() if fires(t) != s.matches(t)]
    assert not mismatches[:5]


# -- random expressions ---------------------------------------------------------------


def _item(lo: int, hi: int) -> st.SearchStrategy[str]:
    value = st.integers(lo, hi)
    ranged = st.tuples(value, value).map(lambda p: f"{min(p)}-{max(p)}")
    step = st.integers(1, hi - lo + 1)
    return st.one_of(
        value.map(str), ranged, step.map(lambda n: f"*/{n}"),
        st.tuples(ranged, step).map(lambda p: f"{p[0]}/{p[1]}"),
    )


def _field_text(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.one_of(st.just("*"), st.lists(_item(lo, hi), min_size=1, max_size=3).map(",".join))


EXPRESSIONS = st.tuples(_field_text(0, 59), _field_text(0, 23), _field_text(1, 31), _field_text(1, 12),
                        _field_text(0, 7)).map(" ".join)


@needs_systemd
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS)
def test_random_expressions_agree_with_systemd(expr: str) -> None:
    try:
        s = cron.parse(expr)
    except CronError as exc:
        assert "never matches" in str(exc)
        return
    assert _merged_next(cron.to_oncalendar(s), 6) == _cron_next(s, 6)


@settings(max_examples=60, deadline=None)
@given(EXPRESSIONS)
def test_random_expressions_agree_with_launchd(expr: str) -> None:
    try:
        s = cron.parse(expr)
        fires = _launchd(cron.to_calendar_intervals(s, limit=5000))
    except CronError as exc:
        assert "never matches" in str(exc) or "both Day and Weekday" in str(exc) or "expands to" in str(exc)
        return
    for start in (datetime(2028, 2, 28), datetime(2027, 7, 31)):
        for minute in range(0, 2 * 24 * 60, 7):
            when = start + timedelta(minutes=minute)
            assert fires(when) == s.matches(when), when


def test_macros_expand_and_reboot_is_refused() -> None:
    from maestro_py import cron

    assert cron.parse("@daily").expr == "0 0 * * *" and cron.parse("@HOURLY").expr == "0 * * * *"
    assert cron.parse("@weekly").expr == "0 0 * * 0"
    with pytest.raises(cron.CronError, match="unknown macro"):
        cron.parse("@reboot")
