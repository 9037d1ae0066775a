"""Failure classes: what a failed sub-session means, and how each class is handled (data, in one place)."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from maestro_py.session.runner import RunOutcome


class FailureClass(str, enum.Enum):
    """Why a run failed, as far as the daemon can tell."""

    AUTH = "auth"              # 401, 403, "Not logged in": every cadence would fail the same way
    RATE = "rate"              # 429, 529: the API is pushing back
    TRANSIENT = "transient"    # 5xx, connection error, timeout, killed
    PERMANENT = "permanent"    # 400, 404, 413: the same prompt will fail again
    UNKNOWN = "unknown"        # no parsable result
    SPAWN = "spawn"            # the CLI could not be started at all
    DISK = "disk"              # no parsable result while the log's disk is full or read-only: not the tick's fault
    QUOTA = "quota"            # the subscription's usage limit: every cadence would hit it until it resets


@dataclass(frozen=True)
class Handling:
    """What the daemon does with a failure of one class."""

    burns_attempt: bool   # False: the tick is requeued as it was (the failure is not the tick's fault)
    dead_letter: bool     # True: straight to dlq/, no retry
    trips_breaker: bool   # counts toward the cadence's circuit breaker and backoff
    halts_all: bool       # opens the global auth halt: nothing spawns until credentials change
    holds_quota: bool = False  # opens the quota hold: nothing spawns until the usage limit resets


HANDLING: dict[FailureClass, Handling] = {
    FailureClass.AUTH: Handling(burns_attempt=False, dead_letter=False, trips_breaker=False, halts_all=True),
    FailureClass.RATE: Handling(burns_attempt=True, dead_letter=False, trips_breaker=True, halts_all=False),
    FailureClass.TRANSIENT: Handling(burns_attempt=True, dead_letter=False, trips_breaker=True, halts_all=False),
    FailureClass.PERMANENT: Handling(burns_attempt=True, dead_letter=True, trips_breaker=True, halts_all=False),
    FailureClass.UNKNOWN: Handling(burns_attempt=True, dead_letter=False, trips_breaker=True, halts_all=False),
    FailureClass.SPAWN: Handling(burns_attempt=True, dead_letter=False, trips_breaker=True, halts_all=False),
    FailureClass.DISK: Handling(burns_attempt=False, dead_letter=False, trips_breaker=False, halts_all=False),
    FailureClass.QUOTA: Handling(burns_attempt=False, dead_letter=False, trips_breaker=False, halts_all=False,
                                 holds_quota=True),
}
# The CLI's words at a subscription or workspace usage limit, which change between versions. Matched only on the
# result of a failed run (a run's own output may quote them), and only when no structured event says so.
_LIMIT_TEXT = re.compile(r"usage limit reached|hit your (?:\w+ )?limit|out of usage credits|"
                         r"reached your specified .{0,40}usage limits", re.IGNORECASE)
QUOTA_DEFAULT_HOLD = 3600.0   # seconds, when the CLI gave no reset time
QUOTA_MAX_HOLD = 7 * 86400.0

_BY_STATUS: dict[int, FailureClass] = {
    401: FailureClass.AUTH, 403: FailureClass.AUTH,
    429: FailureClass.RATE, 529: FailureClass.RATE,
    400: FailureClass.PERMANENT, 404: FailureClass.PERMANENT, 413: FailureClass.PERMANENT,
}
# The CLI's own words when it has no usable credential (it then reports api_error_status null or 401).
_AUTH_TEXT = re.compile(r"Not logged in|Invalid API key|Failed to authenticate|OAuth token", re.IGNORECASE)


def hit_usage_limit(outcome: RunOutcome) -> bool:
    """A failed run stopped by the usage limit: the structured `rate_limit_event` says `rejected`, or, without
    any event, the failed result's own text says so."""
    result = outcome.result
    if result is None or not result.is_error:
        return False
    if result.rate_limit is not None:
        return result.rate_limit.get("status") == "rejected"
    return bool(result.text and _LIMIT_TEXT.search(result.text))


def quota_reset(outcome: RunOutcome, now: datetime, min_hold: float) -> tuple[datetime, str]:
    """(until, kind) of a usage-limit hold: the event's reset time clamped to [now + min_hold, now + 7 days],
    else an hour; the kind is the limit's window (five_hour, seven_day, …)."""
    info = (outcome.result.rate_limit if outcome.result else None) or {}
    kind = str(info.get("rateLimitType") or "usage limit")
    try:
        resets = float(info["resetsAt"])
        wait = resets - now.timestamp() if math.isfinite(resets) else QUOTA_DEFAULT_HOLD
    except (KeyError, TypeError, ValueError):
        wait = QUOTA_DEFAULT_HOLD
    return now + timedelta(seconds=min(max(wait, min_hold), QUOTA_MAX_HOLD)), kind


def refused_retry(outcome: RunOutcome, cli_retries: bool) -> bool:
    """True if the API said not to retry (`x-should-retry: false`): a 5xx the CLI, which retries 5xx, did not."""
    result = outcome.result
    return (cli_retries and result is not None and result.api_retries == 0
            and result.api_error_status is not None and 500 <= result.api_error_status < 529)


def silent(outcome: RunOutcome) -> bool:
    """A "success" that is not one: exit 0, `is_error: false`, yet not `ok` (no result text in zero turns)."""
    result = outcome.result
    return (outcome.exit_code == 0 and result is not None and result.is_error is False and not outcome.truncated
            and not outcome.ok)


def classify(outcome: RunOutcome, *, cli_retries: bool = False) -> FailureClass:
    """The failure class of a run that did not succeed (`cli_retries`: the CLI was allowed to retry)."""
    result = outcome.result
    if outcome.breach is not None:
        return FailureClass.PERMANENT  # the same run would hit the same limit again
    if outcome.timed_out or outcome.signal is not None:
        return FailureClass.TRANSIENT
    if result is None or silent(outcome):
        return FailureClass.UNKNOWN
    status = result.api_error_status
    if hit_usage_limit(outcome):
        return FailureClass.QUOTA
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if refused_retry(outcome, cli_retries):
        return FailureClass.PERMANENT  # the server knows: another attempt would cost a start and fail the same
    if result.text and _AUTH_TEXT.search(result.text):
        return FailureClass.AUTH
    if status is not None and status >= 500:
        return FailureClass.TRANSIENT
    if result.subtype in ("error_max_budget_usd", "error_max_turns"):
        return FailureClass.PERMANENT  # the same run would hit the same cap again
    # is_error with no status: a connection error or timeout inside the CLI.
    return FailureClass.TRANSIENT


def failure_reason(outcome: RunOutcome, *, cli_retries: bool = False) -> str:
    """One line for the tick's history: why the run failed."""
    if outcome.breach is not None:
        said = (outcome.tail.strip().splitlines() or [f"signal {outcome.signal}"])[-1][:300]
        return f"{outcome.breach} (raise it in cadences.toml if the duty needs more): {said}"
    if outcome.timed_out:
        limit = f" after {outcome.timeout_s:g} s" if outcome.timeout_s else ""
        said = "its last output is in `tail`" if outcome.tail.strip() else "it printed nothing before it was ended"
        return f"timed out{limit}: {said}"
    result = outcome.result
    if result is not None and result.is_error:
        status = f" (HTTP {result.api_error_status})" if result.api_error_status else ""
        told = "; the API said not to retry it" if refused_retry(outcome, cli_retries) else ""
        return f"claude reported an error{status}{told}: {(result.text or '').strip()[:500]}"
    if outcome.signal:
        return f"killed by signal {outcome.signal}"
    if result is None:
        return f"exit {outcome.exit_code} with no parsable result"
    if silent(outcome):
        return "exit 0 and is_error false, but no result text and no turns: nothing was done (unknown)"
    return f"exit {outcome.exit_code}"
