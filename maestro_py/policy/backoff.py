"""Per-cadence backoff: after a failure a cadence is not spawned again before `next_allowed_at`.

The waits are tenacity wait strategies driven by the count of consecutive failures, so the schedule
(`0,30,120`: one entry per failure, the last repeating) and exponential full jitter with a cap
(`exp:30:1800`) are both tenacity's maths, not ours.

Why a wait strategy and not tenacity's `Retrying`: `Retrying` wraps one call in one process and sleeps between its
tries. A tick's tries are separate claims, possibly in separate daemon processes, with other ticks running in
between and the count persisted in the tick; nothing here may sleep. So the backoff holds the strategy and asks it
for one wait per failure, through the `RetryCallState` a strategy takes (`_wait_after`), and keeps the count itself.

tenacity is imported where a wait is built or driven, not with the module: the settings check the
`MAESTRO_BACKOFF_SECONDS` syntax with `parse_backoff` on every read, and `maestro enqueue` (run by cron) reads
them, but never waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

from maestro_py.clock import MAX_NUMBER

if TYPE_CHECKING:
    import tenacity

Wait = Callable[["tenacity.RetryCallState"], float]  # a tenacity wait strategy: any callable of the retry state


class _Schedule:
    """wait N seconds after the Nth consecutive failure, repeating the last entry."""

    def __init__(self, seconds: tuple[float, ...]) -> None:
        self.seconds = seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.seconds[min(retry_state.attempt_number, len(self.seconds)) - 1]


def parse_backoff(text: str) -> Wait:
    """`0,30,120` (a schedule) or `exp:BASE:CAP` (exponential, full jitter, capped); ValueError if neither."""
    text = text.strip()
    if text.startswith("exp"):
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError("must look like exp:BASE:CAP, e.g. exp:30:1800")
        base, cap = float(parts[1]), float(parts[2])
        if not (0 < base <= cap <= MAX_NUMBER):
            raise ValueError(f"exp:BASE:CAP needs 0 < BASE <= CAP <= {MAX_NUMBER:g}")
        import tenacity

        return tenacity.wait_random_exponential(multiplier=base, max=cap)
    values = tuple(float(part) for part in text.split(",") if part.strip())
    if not values or not all(0 <= v <= MAX_NUMBER for v in values):  # NaN and infinity too
        raise ValueError(f"must be comma-separated seconds from 0 to {MAX_NUMBER:g} (e.g. 0,30,120) or exp:BASE:CAP")
    return _Schedule(values)


def schedule(seconds: tuple[float, ...]) -> Wait:
    """A fixed schedule from a cadence's `backoff_seconds`."""
    return _Schedule(seconds)


def _wait_after(wait: Wait, failures: int) -> float:
    """What `wait` says to wait after the `failures`-th consecutive failure (its call state holds just the count)."""
    import tenacity

    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = failures
    return wait(state)


@dataclass
class Backoff:
    """Consecutive failures and the earliest next spawn, per cadence."""

    wait: Wait
    failures: dict[str, int] = field(default_factory=dict)
    next_allowed: dict[str, datetime] = field(default_factory=dict)

    def record_failure(self, cadence: str, now: datetime, wait: Wait | None = None, *,
                       at_least: float = 0.0) -> datetime:
        """Count a failure and return when the cadence may spawn again (not before `at_least` seconds)."""
        n = self.failures.get(cadence, 0) + 1
        self.failures[cadence] = n
        at = now + timedelta(seconds=max(_wait_after(wait or self.wait, n), at_least))
        self.next_allowed[cadence] = at
        return at

    def record_success(self, cadence: str) -> None:
        """A success ends the cadence's backoff."""
        self.failures.pop(cadence, None)
        self.next_allowed.pop(cadence, None)

    def holds(self, cadence: str, now: datetime) -> datetime | None:
        """When the cadence may spawn again, if that is still in the future."""
        at = self.next_allowed.get(cadence)
        return at if at is not None and at > now else None
