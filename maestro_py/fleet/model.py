"""The governor store's vocabulary: scopes, limits, leases, a reserve's answer, and store URLs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from collections.abc import Iterable, Mapping

from maestro_py.errors import ConfigError, MaestroError
from maestro_py.redact import mask_url
from maestro_py.policy.budget import Limit, local_zone

WINDOWS = ("hourly", "daily", "monthly")


class StoreUnavailable(MaestroError):
    """The store cannot be reached or answered with an error: no spawn may reserve (fail closed)."""


@dataclass(frozen=True)
class ScopeLimit:
    """A limit as the store holds it: a scope (`fleet`, `agent:NAME`, `cadence:AGENT/NAME`), a window, a zone."""

    scope: str
    window: str
    limit: Limit
    tz: str | None = None  # whose midnight ends a day or month; None: each machine's own

    def zone(self) -> tzinfo | None:
        if self.tz is None:
            return local_zone()
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.tz)


@dataclass(frozen=True)
class Lease:
    """What a reservation holds for one run, and who holds it."""

    run_id: str
    agent: str
    cadence: str
    host: str
    pid: int
    tick: str
    tokens: float
    usd: float


@dataclass(frozen=True)
class Admission:
    """A reserve's answer: admitted, or refused for the live cap or a budget (with the figures)."""

    admitted: bool
    reason: str | None = None           # "live_cap" or "budget"
    detail: str = ""                    # one line for the operator
    scope: str | None = None
    window: str | None = None
    resets_at: datetime | None = None
    never_fits: bool = False
    live: int = 0                       # reservations live in the fleet when it was decided


def check_scope(scope: str) -> str:
    """`scope` if well formed (`fleet`, `agent:NAME`, `cadence:AGENT/NAME`), else ConfigError."""
    kind, _, rest = scope.partition(":")
    ok = (scope == "fleet" or kind == "agent" and rest and "/" not in rest
          or kind == "cadence" and rest.count("/") == 1 and all(rest.split("/")))
    if not ok or len(scope) > 200:
        raise ConfigError(f"scope {scope[:80]!r}: use fleet, agent:NAME or cadence:AGENT/NAME")
    return scope


def scopes_of(agent: str, cadence: str) -> tuple[str, str, str]:
    """The scopes a run of `agent`'s `cadence` counts against."""
    return "fleet", f"agent:{agent}", f"cadence:{agent}/{cadence}"


def check_url(url: str) -> str:
    """`url` if it names a store this build can open, else ConfigError (one line, no password)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:////"):
            raise ConfigError(f"MAESTRO_GOVERNOR_URL={mask_url(url)!r}: an SQLite store needs an absolute path, "
                              "as sqlite:////abs/path/governor.db")
        return url
    if scheme in ("postgresql", "postgres"):
        return url
    raise ConfigError(f"MAESTRO_GOVERNOR_URL={mask_url(url)!r}: use sqlite:////abs/path/governor.db or "
                      "postgresql://user@host/db")


def over(limit: Limit, tokens: float, usd: float) -> str | None:
    if limit.tokens is not None and tokens > limit.tokens:
        return "tokens"
    if limit.usd is not None and usd > limit.usd:
        return "usd"
    return None


def axis(limit: Limit, unit: str) -> float:
    value = limit.tokens if unit == "tokens" else limit.usd
    return math.nan if value is None else float(value)


def limit_rows(limits: Iterable[ScopeLimit]) -> list[Mapping[str, Any]]:
    """Limits as `governor show --json` prints them."""
    return [{"scope": sl.scope, "window": sl.window, "tokens": sl.limit.tokens, "usd": sl.limit.usd, "tz": sl.tz}
            for sl in limits]
