"""What each key of a cadence table in `cadences.toml` may hold: one checker per key (`FIELDS`).

A checker returns the value as the registry keeps it, or raises `Bad` with the problem in words.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

from maestro_py import cron, handler_spec
from maestro_py.clock import MAX_COUNT, MAX_NUMBER

class Mode(enum.StrEnum):
    """How a cadence's tick runs: a sub-session, a handler in the daemon's loop, or a guard first then maybe both."""

    ESCALATE = "escalate"  # one `claude --print` sub-session
    INLINE = "inline"      # a handler in the daemon's loop; no gate holds it
    GUARDED = "guarded"    # a guard in the loop decides whether the sub-session is needed


MODES = tuple(mode.value for mode in Mode)
OVERLAPS = ("skip", "buffer_one", "allow")


_NO_VALUE = object()


class Bad(Exception):
    def __init__(self, problem: str, value: Any = _NO_VALUE) -> None:
        super().__init__(problem)
        self.problem = problem if value is _NO_VALUE else f"{problem}, got {show(value)}"


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _is_number(value: Any) -> bool:
    # TOML booleans are Python bools, which are ints: `timeout_seconds = true` must not mean 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(*, above: float | None = None, at_least: float | None = None) -> Callable[[Any], float]:
    wanted = f"a number > {above:g}" if above is not None else f"a number >= {at_least:g}"

    def check(value: Any) -> float:
        if not _is_number(value) or (above is not None and value <= above) or (
            at_least is not None and value < at_least
        ):
            raise Bad(f"must be {wanted}", value)
        if value > MAX_NUMBER:  # would overflow a date or a sum later
            raise Bad(f"must be at most {MAX_NUMBER:g}", value)
        return float(value)

    return check


def integer(*, at_least: int, wording: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < at_least:
            raise Bad(f"must be {wording}", value)
        if value > MAX_COUNT:
            raise Bad(f"must be at most {MAX_COUNT}", value)
        return value

    return check


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise Bad("must be one of " + ", ".join(f'"{o}"' for o in options), value)
        return str(value)

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Bad("must be a non-empty string", value)
    return value


def _runnable(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad('must be a string: "noop", "module:function" or a command', value)
    try:
        handler_spec.parse(value)
    except ValueError as exc:
        raise Bad(str(exc), value) from None
    return value.strip()


def strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Bad("must be a list of strings", value)
    return tuple(value)


def _schedule(value: Any) -> str:
    """A cron expression checked in full now (not first at `service print`); a macro becomes its 5 fields."""
    if not isinstance(value, str):
        raise Bad("must be a cron expression (minute hour day-of-month month day-of-week) or a macro "
                  "such as @daily", value)
    try:
        return cron.parse(value).expr
    except cron.CronError as exc:
        raise Bad(f"is not a valid schedule: {exc}", value) from None


def _timezone(value: Any) -> str:
    """A time zone the schedule's times are in (IANA name), for systemd timers."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value if isinstance(value, str) else "")
        return str(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise Bad("must be an IANA time zone such as Europe/Paris", value) from None


def _delays(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(_is_number(v) and v >= 0 for v in value):
        raise Bad("must be a non-empty list of numbers >= 0", value)
    if any(v > MAX_NUMBER for v in value):
        raise Bad(f"must be numbers of at most {MAX_NUMBER:g} seconds", value)
    return tuple(float(v) for v in value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad("must be true or false", value)
    return value


FIELDS: dict[str, Callable[[Any], Any]] = {
    "mode": choice(MODES),
    "prompt": _text,
    "handler": _runnable,
    "guard": _runnable,
    "timeout_seconds": _number(above=0),
    "max_attempts": integer(at_least=1, wording="an integer >= 1"),
    "model": _text,
    "claude_args": strings,
    "schedule": _schedule,
    "timezone": _timezone,
    "overlap": choice(OVERLAPS),
    "output_format": choice(("stream-json", "json")),
    "max_budget_usd": _number(above=0),
    "budget_tokens_daily": integer(at_least=1, wording="an integer > 0"),
    "budget_usd_daily": _number(above=0),
    "reserve_tokens": integer(at_least=0, wording="an integer >= 0"),
    "reserve_usd": _number(at_least=0),
    "budget_exempt": flag,
    "backoff_seconds": _delays,
    "webhook_events": strings,  # the X-GitHub-Event names a signed webhook may trigger it with ("*": any)
}
