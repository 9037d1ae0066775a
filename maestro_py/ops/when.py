"""Times as an operator reads and writes them: local wall-clock time with its zone, "in 5 min", and `--since`."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

from maestro_py.clock import parse_iso

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\Z")
_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def local(value: datetime | str | None, *, seconds: bool = True) -> str:
    """A time as an operator reads it, the one way every human-facing output shows one: `2026-11-23 13:30:00 CET`
    in the machine's zone (`TZ`, else /etc/localtime), its name, or its offset (`+05:30`) where the zone has no
    name; `seconds=False` leaves the seconds out. "-" for None or ""; an unparsable string as it is. JSON output
    keeps UTC ISO 8601: this is for people only."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = parse_iso(value)
        except ValueError:
            return value
    moment = value.astimezone()
    zone = moment.strftime("%Z")
    if not zone.isalpha():  # "-03" or "" (tzdata names some zones by their offset only): the offset, unambiguous
        offset = moment.strftime("%z")
        zone = f"{offset[:3]}:{offset[3:]}" if offset else ""
    shown = moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{shown} {zone}".rstrip()


def relative(when: datetime, now: datetime) -> str:
    """`in 29 min`, `3.5 h ago`, `now`."""
    seconds = (when - now).total_seconds()
    span = abs(seconds)
    if span < 1:
        return "now"
    words = (f"{span:.0f} s" if span < 90 else f"{span / 60:.0f} min" if span < 5400
             else f"{span / 3600:.1f} h" if span < 48 * 3600 else f"{span / 86400:.1f} days")
    return f"in {words}" if seconds > 0 else f"{words} ago"


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `24h`, `90m`, `2w` before `now`; a date (`2026-11-01`: local midnight); or an ISO 8601 time.
    ValueError saying what is accepted."""
    text = text.strip()
    match = _SPAN.match(text.lower())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(day, time()).astimezone().astimezone(timezone.utc)  # local midnight
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _fail(text)
    return moment.astimezone() if moment.tzinfo is None else moment  # a time without a zone is local


def _fail(text: str) -> datetime:
    raise ValueError(f"{text!r} is not a span (7d, 24h, 90m, 2w), a date (2026-11-01) or an ISO time")


def duration(ms: float | None) -> str:
    """How long something took, as an operator reads it: `850 ms`, `12.3 s`, `4 min 05 s`, `1 h 02 min`; "-" for
    None."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
