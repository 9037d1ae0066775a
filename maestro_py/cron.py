"""5-field cron expressions (minute hour day-of-month month day-of-week) and their service-manager forms.

Semantics follow Vixie cron / cronie, the crons people copy expressions from:
- `*`, numbers, lists `a,b`, ranges `a-b`, steps `*/n`, `a-b/n` and `a/n` (= `a-<max>/n`); month names
  `jan`…`dec` and day names `sun`…`sat` (any case); day-of-week 0 and 7 are Sunday.
- The day rule: when day-of-month and day-of-week are *both* restricted (neither field starts with `*`),
  a day matches if **either** matches (OR); otherwise both must match (AND). So `0 0 1-31 * 1` runs every
  day, and `0 0 */2 * 1` runs on odd days that are Mondays.
- Times are the machine's local time, as for cron, systemd timers and launchd.

Conversions, and what each target refuses:
- systemd `OnCalendar=`: one line, or two when the OR rule applies (a timer fires when any of its
  OnCalendar= lines elapses, so two lines express OR exactly; a day matching both fires once).
- launchd `StartCalendarInterval`: the cartesian product of the restricted fields, one dict per
  combination (a dict or a list of dicts). A dict holding both Day and Weekday fires when *either*
  matches, so the OR rule maps to separate Day and Weekday dicts, and the AND rule with both fields
  restricted cannot be expressed (refused). An expansion over `limit` entries is refused.
- An expression that can never match (`0 0 31 2 *`) is refused by the parser.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo

FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_BOUNDS = {"minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31), "month": (1, 12), "day-of-week": (0, 7)}
_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_WEEKDAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_NAMES = {"month": _MONTHS, "day-of-week": _WEEKDAYS}
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # 29: a leap-year Feb 29 does occur
_SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
LAUNCHD_LIMIT = 500

Values = frozenset[int] | None  # None: the field is unrestricted


class CronError(ValueError):
    """A cron expression that is invalid, or cannot be expressed for a target; the message says why."""


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression; every field is a set of values or None (any)."""

    expr: str
    minutes: Values
    hours: Values
    days: Values  # day of month, 1-31
    months: Values
    weekdays: Values  # 0 = Sunday … 6 = Saturday
    either_day: bool  # cron's OR rule: a day matches if its day-of-month OR its weekday matches

    def matches(self, when: datetime) -> bool:
        """Whether the expression fires at `when`'s minute (a reference for tests and tools)."""
        def has(values: Values, value: int) -> bool:
            return values is None or value in values

        if not (has(self.minutes, when.minute) and has(self.hours, when.hour) and has(self.months, when.month)):
            return False
        weekday = when.isoweekday() % 7
        if self.either_day:
            return has(self.days, when.day) or has(self.weekdays, weekday)
        return has(self.days, when.day) and has(self.weekdays, weekday)


# The macros Vixie cron and cronie accept, as their 5 fields (`@reboot` is no time: refused).
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def parse(expr: str) -> CronSchedule:
    """Parse a 5-field cron expression or a macro (`@daily`…); CronError names the field and the problem."""
    if expr.strip().startswith("@"):
        macro = expr.strip().lower()
        if macro not in MACROS:
            raise CronError(f"unknown macro {expr.strip()[:20]!r}: use one of {', '.join(MACROS)}")
        expr = MACROS[macro]
    parts = expr.split()
    if len(parts) != 5:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    sets = {name: _field(name, text) for name, text in zip(FIELD_NAMES, parts)}
    minute, hour, dom, month, dow = (sets[n] for n in FIELD_NAMES)
    dow = frozenset(v % 7 for v in dow)
    dom_full, dow_full = len(dom) == 31, len(dow) == 7
    either = not parts[2].startswith("*") and not parts[4].startswith("*")
    if either and (dom_full or dow_full):
        days: Values = None  # "every day OR something" is every day
        weekdays: Values = None
        either = False
    else:
        days = None if dom_full else dom
        weekdays = None if dow_full else dow
    schedule = CronSchedule(
        expr=" ".join(parts),
        minutes=None if len(minute) == 60 else minute,
        hours=None if len(hour) == 24 else hour,
        days=days,
        months=None if len(month) == 12 else month,
        weekdays=weekdays,
        either_day=either,
    )
    _check_possible(schedule)
    return schedule


def _field(name: str, text: str) -> frozenset[int]:
    lo, hi = _BOUNDS[name]
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{name} field {text!r}: empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{name} field {text!r}: step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi if name != "day-of-week" else 6
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _value(name, text, first), _value(name, text, last)
            if name == "day-of-week" and end == 0 and start > 0:
                end = 7  # fri-sun
            if start > end:
                raise CronError(f"{name} field {text!r}: range {base!r} runs backwards")
        else:
            start = _value(name, text, base)
            end = (hi if name != "day-of-week" else 6) if slash else start  # a/n means a-<max>/n
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(name: str, text: str, token: str) -> int:
    lo, hi = _BOUNDS[name]
    named = _NAMES.get(name, {}).get(token.lower())
    if named is not None:
        return named
    if not token.isdigit():
        hint = " (names: jan-dec)" if name == "month" else " (names: sun-sat)" if name == "day-of-week" else ""
        raise CronError(f"{name} field {text!r}: {token!r} is not a number{hint}")
    value = int(token)
    if not lo <= value <= hi:
        raise CronError(f"{name} field {text!r}: {value} is out of range {lo}-{hi}")
    return value


def _check_possible(s: CronSchedule) -> None:
    """Refuse a day-of-month that never occurs in the chosen months (it would never fire)."""
    if s.days is None or s.either_day:
        return
    months = s.months if s.months is not None else range(1, 13)
    if not any(day <= _MONTH_DAYS[m - 1] for m in months for day in s.days):
        raise CronError(f"never matches: day-of-month {_plain(s.days)} does not occur in month(s) {_plain(months)}")


def _plain(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


# -- systemd ------------------------------------------------------------------------


def to_oncalendar(expr: str | CronSchedule) -> list[str]:
    """systemd OnCalendar= values (one, or two for cron's day-of-month OR day-of-week rule)."""
    s = parse(expr) if isinstance(expr, str) else expr
    clock = f"{_numbers(s.hours, 23)}:{_numbers(s.minutes, 59)}:00"
    month = _numbers(s.months, 12)
    if s.either_day:
        return [f"{_weekdays(s.weekdays)} *-{month}-* {clock}", f"*-{month}-{_numbers(s.days, 31)} {clock}"]
    prefix = f"{_weekdays(s.weekdays)} " if s.weekdays is not None else ""
    return [f"{prefix}*-{month}-{_numbers(s.days, 31)} {clock}"]


def _numbers(values: Values, hi: int) -> str:
    if values is None:
        return "*"
    ordered = sorted(values)
    if len(ordered) >= 3:
        steps = {b - a for a, b in zip(ordered, ordered[1:])}
        if len(steps) == 1:
            step = steps.pop()
            first, last = ordered[0], ordered[-1]
            if step == 1:
                return f"{first:02d}..{last:02d}"
            # "a/n" repeats to the field's end; "a..b/n" stops at b.
            return f"{first:02d}/{step}" if last + step > hi else f"{first:02d}..{last:02d}/{step}"
    return ",".join(_runs(ordered, lambda v: f"{v:02d}"))


def _weekdays(values: Values) -> str:
    if values is None:
        return "*"
    # systemd's week starts on Monday and its ranges cannot wrap, so Sunday sorts last.
    ordered = sorted(values, key=lambda d: (d + 6) % 7)
    return ",".join(_runs(ordered, lambda d: _SYSTEMD_DAYS[d], key=lambda d: (d + 6) % 7))


def _runs(ordered: list[int], show: Callable[[int], str], key: Callable[[int], int] = lambda v: v) -> list[str]:
    """Consecutive values (by `key`) of three or more as `a..b`, the rest one by one."""
    out: list[str] = []
    run: list[int] = []
    for value in ordered:
        if run and key(value) == key(run[-1]) + 1:
            run.append(value)
            continue
        out.extend(_flush(run, show))
        run = [value]
    out.extend(_flush(run, show))
    return out


def _flush(run: list[int], show: Callable[[int], str]) -> list[str]:
    if len(run) >= 3:
        return [f"{show(run[0])}..{show(run[-1])}"]
    return [show(v) for v in run]


# -- launchd ------------------------------------------------------------------------


Interval = dict[str, int]


def to_calendar_intervals(expr: str | CronSchedule, limit: int = LAUNCHD_LIMIT) -> Interval | list[Interval]:
    """launchd StartCalendarInterval: one dict, or a list of dicts (their union)."""
    s = parse(expr) if isinstance(expr, str) else expr
    if s.days is not None and s.weekdays is not None and not s.either_day:
        raise CronError("day-of-month and day-of-week must both match here (one field starts with '*'), "
                        "but a launchd entry with both Day and Weekday fires when either matches")
    common = [("Month", s.months), ("Hour", s.hours), ("Minute", s.minutes)]
    if s.either_day:
        branches = [[("Day", s.days), *common], [("Weekday", s.weekdays), *common]]
    else:
        branches = [[("Day", s.days), ("Weekday", s.weekdays), *common]]
    sizes = [_product_size(branch) for branch in branches]
    if sum(sizes) > limit:
        raise CronError(f"expands to {sum(sizes)} launchd StartCalendarInterval entries (limit {limit}); "
                        "use fewer list/range/step values")
    entries = [entry for branch in branches for entry in _product(branch)]
    return entries[0] if len(entries) == 1 else entries


def _product_size(branch: list[tuple[str, Values]]) -> int:
    size = 1
    for _, values in branch:
        size *= len(values) if values is not None else 1
    return size


def _product(branch: list[tuple[str, Values]]) -> list[dict[str, int]]:
    keys = [key for key, values in branch if values is not None]
    pools = [sorted(values) for _, values in branch if values is not None]
    return [dict(zip(keys, combo)) for combo in itertools.product(*pools)]


# -- when it fires ------------------------------------------------------------------------


def next_fire(expr: str | CronSchedule, after: datetime, zone: tzinfo | None = None,
              horizon_days: int = 8 * 366) -> datetime | None:
    """The first minute after `after` at which the expression fires, in `zone` (a cadence's `timezone`; None: the
    machine's local time, as cron reads it), aware; None if none within `horizon_days` (a Feb 29 on a given weekday
    can be years away)."""
    s = parse(expr) if isinstance(expr, str) else expr
    start = (after.astimezone(zone) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    hours = sorted(s.hours) if s.hours is not None else list(range(24))
    minutes = sorted(s.minutes) if s.minutes is not None else list(range(60))
    day = start.date()
    for _ in range(horizon_days):
        # The earliest time of the day passes the hour and minute fields, so `matches` judges the day alone.
        if s.matches(datetime.combine(day, time(hours[0], minutes[0]))):
            for hour in hours:
                for minute in minutes:
                    if day == start.date() and (hour, minute) < (start.hour, start.minute):
                        continue
                    if zone is not None:
                        return datetime.combine(day, time(hour, minute), tzinfo=zone)
                    return datetime.combine(day, time(hour, minute)).astimezone()  # local, DST by the C library
        day += timedelta(days=1)
    return None
