"""Time, injected: the daemon loop and its policies read time only through a `Clock`, so tests drive it.

(Waits on I/O — `select` timeouts, a lock's settle window, a sub-session's watcher — measure their own
real elapsed time: they bound how long the process blocks, not what it decides.)
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


# The largest number any setting, delay or wait may be: every duration added to a datetime then stays far
# inside its range (year 9999), and no amount overflows a float sum. About 31 years of seconds.
MAX_NUMBER = 1e9
MAX_COUNT = 10**12  # the same for integers (token budgets, counts)


class Clock(Protocol):
    """What the code needs to know about time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


def iso(dt: datetime) -> str:
    """ISO 8601 UTC with a trailing Z and millisecond precision (formatted by hand: it runs for every event)."""
    if dt.tzinfo is not timezone.utc:
        dt = dt.astimezone(timezone.utc)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
            f".{dt.microsecond // 1000:03d}Z")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; naive values are taken as UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt
