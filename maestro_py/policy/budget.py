"""The budget: token and dollar limits per window, reserve before spawn, settle after.

Spent is always derived from the cost ledger (the source of truth), so a restart never resets it and
nothing is counted twice. A run holds a reservation (its estimate) while it is live; concurrent runs each
hold theirs, so a fan-out cannot overshoot a limit by more than one run's estimate error. A run whose usage
was not measured is charged its reservation (unless its cadence is `budget_exempt`): unknown spend never
reads as free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from maestro_py.clock import iso, parse_iso

RECENT_RUNS = 5  # how many metered runs of a cadence its estimate averages


@dataclass(frozen=True)
class Limit:
    """A ceiling on tokens and/or dollars (None = unlimited on that axis)."""

    tokens: int | None = None
    usd: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.tokens is None and self.usd is None


@dataclass(frozen=True)
class Charge:
    """What one run counts against the budget."""

    ts: datetime
    cadence: str
    tokens: float
    usd: float


@dataclass(frozen=True)
class Estimate:
    """A reservation: what a run is expected to cost, and where the figure came from."""

    tokens: float
    usd: float
    basis: str  # "configured" ("configured tokens"/"… usd": that axis only), "recent average of N runs", "default"


@dataclass(frozen=True)
class Shortfall:
    """A budget that cannot cover a run's estimate: spent until `resets_at`, or (`never_fits`) smaller than it."""

    scope: str
    window: str
    resets_at: datetime
    unit: str  # "tokens" or "usd": the axis that falls short
    limit: Limit
    estimate: Estimate
    never_fits: bool = False

    def details(self, cadence: str) -> dict[str, Any]:
        """The `budget_exhausted` event's fields for `cadence` (which the event carries itself)."""
        entry = never_fits_entry(cadence, self.estimate, self.limit, self.unit)
        fields = {k: v for k, v in entry.items() if k != "cadence"}
        if self.never_fits:
            reason = never_fits_lines([entry])[0]
        else:
            reason = (f"{cadence} waits: the {self.scope} {self.window} budget cannot cover its reservation of "
                      f"{amount(self.unit, fields[f'estimate_{self.unit}'])} until {iso(self.resets_at)}")
        return {"scope": self.scope, "window": self.window, "resets_at": iso(self.resets_at),
                "never_fits": self.never_fits, **fields, "reason": reason}


def over_limit(limit: Limit, estimate: Estimate) -> str | None:
    """The unit on which `estimate` alone is more than `limit`, so that no window can ever cover it; else None."""
    if limit.tokens is not None and estimate.tokens > limit.tokens:
        return "tokens"
    if limit.usd is not None and estimate.usd > limit.usd:
        return "usd"
    return None


def never_fits_entry(cadence: str, estimate: Estimate, limit: Limit, unit: str) -> dict[str, Any]:
    """A cadence whose one run's reservation is more than a limit, as `budget --json` and the event show it."""
    return {"cadence": cadence, "unit": unit, "basis": estimate.basis, "estimate_tokens": round(estimate.tokens),
            "limit_tokens": limit.tokens, "estimate_usd": round(estimate.usd, 6), "limit_usd": limit.usd}


def never_fits_lines(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Which cadences will never run and why, one line per reservation (for status, budget, doctor, the event)."""
    groups: dict[tuple[str, float, float, str], list[str]] = {}
    for entry in entries:
        unit = entry["unit"]
        key = (unit, entry[f"estimate_{unit}"], entry[f"limit_{unit}"], _source(entry["basis"], unit))
        groups.setdefault(key, []).append(entry["cadence"])
    return [f"{', '.join(names)} will never run: one run reserves {amount(unit, estimate)} ({source}), more than the "
            f"whole limit of {amount(unit, limit)}; raise the limit or lower the reservation"
            for (unit, estimate, limit, source), names in groups.items()]


def _source(basis: str, unit: str) -> str:
    """Where a reservation's figure on `unit` comes from, named as the operator changes it."""
    if basis == "default" or basis.startswith("configured ") and not basis.endswith(unit):
        return f"MAESTRO_RESERVE_{unit.upper()}"
    return f"reserve_{unit}" if basis.startswith("configured") else basis


def amount(unit: str, value: float) -> str:
    """A budget figure in words: `20,000 tokens`, `$0.2500`."""
    return f"${value:.4f}" if unit == "usd" else f"{value:,.0f} tokens"


def local_zone(env: Mapping[str, str] | None = None, localtime: Path = Path("/etc/localtime")) -> tzinfo | None:
    """The machine's time zone as a real zone (`TZ`, else `/etc/localtime`); None: leave it to the C library."""
    env = os.environ if env is None else env
    if "TZ" in env:
        name = env["TZ"].removeprefix(":")
        # A POSIX rule ("CET-1CEST,M3.5.0,…") or an empty TZ names no zone, and the C library follows it rather
        # than /etc/localtime: None, so `window_bounds` asks the C library.
        return _zone_file(Path(name)) if name.startswith("/") else _zone_named(name)
    target = os.readlink(localtime) if localtime.is_symlink() else ""
    named = _zone_named(target.rsplit("zoneinfo/", 1)[1]) if "zoneinfo/" in target else None
    return named or _zone_file(localtime)  # a copied TZif file has no name but still has the rules


def _zone_named(key: str) -> tzinfo | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # here: `maestro enqueue` imports this module

    try:
        return ZoneInfo(key) if key else None
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _zone_file(path: Path) -> tzinfo | None:
    from zoneinfo import ZoneInfo

    try:
        with open(path, "rb") as file:
            return ZoneInfo.from_file(file)
    except (OSError, ValueError):
        return None


def window_bounds(window: str, now: datetime, zone: tzinfo | None = None) -> tuple[datetime, datetime]:
    """(start, reset), in UTC, of the daily or monthly (midnight in `zone`; None: the C library's) or hourly
    window of `now`."""
    # Arithmetic and results are on UTC instants: a datetime in a real zone adds and compares in wall-clock
    # time, which is exactly what goes wrong on DST days.
    local = now.astimezone(zone)
    if window == "hourly":
        # An hour is 3600 real seconds from the local hour's start: the skipped hour has no window, each
        # pass through the repeated hour has its own.
        start = now.astimezone(timezone.utc) - timedelta(minutes=local.minute, seconds=local.second,
                                                         microseconds=local.microsecond)
        return start, start + timedelta(hours=1)
    # Midnight to midnight on the wall clock, each converted on its own: 23 h and 25 h days come out right.
    # (Naive when `zone` is None: `astimezone` then asks the C library, which knows the DST rules.)
    day = local.date()
    if window == "monthly":  # the first's midnight to the next first's, the same way
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return (datetime.combine(first, time(), tzinfo=zone).astimezone(timezone.utc),
                datetime.combine(following, time(), tzinfo=zone).astimezone(timezone.utc))
    start = datetime.combine(day, time(), tzinfo=zone).astimezone(timezone.utc)
    reset = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone).astimezone(timezone.utc)
    return start, reset


def charge_of(row: Mapping[str, Any]) -> Charge | None:
    """A ledger row's charge (its `charged_*` figures, else its metered ones); None if unusable."""
    try:
        ts = parse_iso(str(row["ts"]))
    except (KeyError, ValueError):
        return None
    tokens = row.get("charged_tokens", row.get("total_tokens"))
    usd = row.get("charged_usd", row.get("cost_usd"))
    return Charge(ts, str(row.get("cadence", "")), float(tokens or 0), float(usd or 0))


def charge_for(usage: Mapping[str, Any], reserved: Estimate, *, exempt: bool) -> tuple[bool, int, float]:
    """(measured?, tokens, usd) a finished run is charged: what it measurably spent; if unmeasured, its
    reservation (unknown spend never reads as free), unless its cadence is budget-exempt."""
    if usage.get("cost_usd") is not None or usage.get("total_tokens") is not None:
        return True, usage.get("total_tokens") or 0, usage.get("cost_usd") or 0.0
    if exempt:
        return False, 0, 0.0
    return False, round(reserved.tokens), reserved.usd


@dataclass
class Budget:
    """Limits, the current windows' charges, and live reservations."""

    global_limits: dict[str, Limit]                      # window -> limit ("daily", "hourly")
    cadence_limits: dict[str, Limit] = field(default_factory=dict)  # cadence -> daily limit
    default_estimate: Estimate = Estimate(20_000, 0.25, "default")
    charges: list[Charge] = field(default_factory=list)  # the current daily window's charges
    history: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # cadence -> metered runs
    reservations: dict[str, tuple[str, Estimate]] = field(default_factory=dict)  # tick id -> (cadence, est)
    announced: set[tuple[str, str]] = field(default_factory=set)  # (scope, window start) already reported
    zone: tzinfo | None = field(default_factory=local_zone)  # whose midnight ends a day (tests inject one)
    _day_start: datetime | None = None

    # -- loading ----------------------------------------------------------
    def load(self, rows: Iterable[Mapping[str, Any]], now: datetime) -> None:
        """Rebuild the current window's charges and each cadence's recent runs from the ledger."""
        start, _ = window_bounds("daily", now, self.zone)
        self._day_start = start
        self.charges = []
        self.history = {}
        for row in rows:
            self._note_history(row)
            charge = charge_of(row)
            if charge is not None and charge.ts >= start:
                self.charges.append(charge)

    def _roll(self, now: datetime) -> None:
        start, _ = window_bounds("daily", now, self.zone)
        if self._day_start != start:
            self._day_start = start
            self.charges = [c for c in self.charges if c.ts >= start]

    def _note_history(self, row: Mapping[str, Any]) -> None:
        tokens, usd = row.get("total_tokens"), row.get("cost_usd")
        if tokens is None or usd is None or not row.get("cadence") or not row.get("ok", True):
            return
        runs = self.history.setdefault(str(row["cadence"]), [])
        runs.append((float(tokens), float(usd)))
        del runs[:-RECENT_RUNS]

    # -- estimating -------------------------------------------------------
    def estimate(self, cadence: str, reserve_tokens: int | None = None, reserve_usd: float | None = None) -> Estimate:
        """Configured reserve, else the cadence's recent metered average, else the default."""
        if reserve_tokens is not None or reserve_usd is not None:
            # Say which axis was configured: the other is the default, and that is the knob to turn.
            basis = ("configured" if reserve_tokens is not None and reserve_usd is not None
                     else "configured tokens" if reserve_tokens is not None else "configured usd")
            return Estimate(float(reserve_tokens if reserve_tokens is not None else self.default_estimate.tokens),
                            float(reserve_usd if reserve_usd is not None else self.default_estimate.usd), basis)
        runs = self.history.get(cadence)
        if runs:
            n = len(runs)
            return Estimate(sum(t for t, _ in runs) / n, sum(u for _, u in runs) / n, f"recent average of {n} runs")
        return self.default_estimate

    # -- the gate ---------------------------------------------------------
    def scopes(self, cadence: str) -> list[tuple[str, str, Limit]]:
        """(scope name, window, limit) of every limit that applies to `cadence`."""
        out = [("global", window, limit) for window, limit in self.global_limits.items() if not limit.unlimited]
        own = self.cadence_limits.get(cadence)
        if own is not None and not own.unlimited:
            out.append((f"cadence:{cadence}", "daily", own))
        return out

    def refusal(self, cadence: str, estimate: Estimate, now: datetime) -> Shortfall | None:
        """The first budget that cannot cover `estimate` (one it can never cover first); None if all can."""
        self._roll(now)
        scopes = self.scopes(cadence)
        for scope, window, limit in scopes:  # waiting for a reset would not help these: say so before the rest
            unit = over_limit(limit, estimate)
            if unit is not None:
                return Shortfall(scope, window, window_bounds(window, now, self.zone)[1], unit, limit, estimate, True)
        for scope, window, limit in scopes:
            spent_t, spent_u = self.spent(scope, window, now)
            held_t, held_u = self.reserved(scope)
            short_tokens = limit.tokens is not None and limit.tokens - spent_t - held_t < estimate.tokens
            if short_tokens or (limit.usd is not None and limit.usd - spent_u - held_u < estimate.usd):
                resets = window_bounds(window, now, self.zone)[1]
                return Shortfall(scope, window, resets, "tokens" if short_tokens else "usd", limit, estimate)
        return None

    def first_report(self, scope: str, window: str, now: datetime, about: str = "") -> bool:
        """True once per scope, window and `about`: `budget_exhausted` is logged once, not once per loop."""
        key = (f"{scope}/{window}/{about}", iso(window_bounds(window, now, self.zone)[0]))
        if key in self.announced:
            return False
        self.announced.add(key)
        return True

    # -- reserve and settle -----------------------------------------------
    def reserve(self, tick_id: str, cadence: str, estimate: Estimate) -> None:
        """Hold `estimate` for a run that is about to spawn."""
        self.reservations[tick_id] = (cadence, estimate)

    def release(self, tick_id: str) -> Estimate | None:
        """Drop a run's reservation (it has been settled)."""
        held = self.reservations.pop(tick_id, None)
        return held[1] if held else None

    def charge(self, row: Mapping[str, Any], now: datetime) -> None:
        """Count a ledger row that has just been written."""
        self._roll(now)
        self._note_history(row)
        charge = charge_of(row)
        if charge is not None and self._day_start is not None and charge.ts >= self._day_start:
            self.charges.append(charge)

    # -- figures ----------------------------------------------------------
    def spent(self, scope: str, window: str, now: datetime) -> tuple[float, float]:
        """(tokens, usd) charged in the window for the scope."""
        start, _ = window_bounds(window, now, self.zone)
        cadence = scope.split(":", 1)[1] if scope.startswith("cadence:") else None
        tokens = usd = 0.0
        for c in self.charges:
            if c.ts >= start and (cadence is None or c.cadence == cadence):
                tokens += c.tokens
                usd += c.usd
        return tokens, usd

    def reserved(self, scope: str) -> tuple[float, float]:
        """(tokens, usd) held by live runs in the scope."""
        cadence = scope.split(":", 1)[1] if scope.startswith("cadence:") else None
        held = [e for c, e in self.reservations.values() if cadence is None or c == cadence]
        return sum(e.tokens for e in held), sum(e.usd for e in held)

    def summary(self, now: datetime, estimates: Mapping[str, Estimate] | None = None) -> list[dict[str, Any]]:
        """Per scope and window: the figures, top cadences, reset time, and `estimates`' cadences that never fit."""
        self._roll(now)
        estimates = estimates or {}
        out = []
        scopes = [("global", w, lim) for w, lim in self.global_limits.items()]
        scopes += [(f"cadence:{c}", "daily", lim) for c, lim in sorted(self.cadence_limits.items())]
        for scope, window, limit in scopes:
            if limit.unlimited and (scope, window) != ("global", "daily"):
                continue  # the global daily line is always shown: it is the spend report
            start, resets = window_bounds(window, now, self.zone)
            spent_t, spent_u = self.spent(scope, window, now)
            held_t, held_u = self.reserved(scope)
            cadence = scope.split(":", 1)[1] if scope.startswith("cadence:") else None
            in_window = [c for c in self.charges if c.ts >= start and (cadence is None or c.cadence == cadence)]
            by_cadence: dict[str, float] = {}
            for c in in_window:
                by_cadence[c.cadence] = by_cadence.get(c.cadence, 0.0) + c.usd
            top = sorted(by_cadence.items(), key=lambda kv: -kv[1])[:5]
            out.append({
                "scope": scope, "window": window, "window_start": iso(start), "resets_at": iso(resets),
                "total": {"tokens": limit.tokens, "usd": limit.usd},
                "spent": {"tokens": round(spent_t), "usd": round(spent_u, 6)},
                "reserved": {"tokens": round(held_t), "usd": round(held_u, 6)},
                "remaining": {
                    "tokens": None if limit.tokens is None else round(limit.tokens - spent_t - held_t),
                    "usd": None if limit.usd is None else round(limit.usd - spent_u - held_u, 6),
                },
                "runs": len(in_window),
                "top_cadences": [{"cadence": c, "usd": round(u, 6)} for c, u in top],
                "never_fits": [never_fits_entry(name, est, limit, unit) for name, est in sorted(estimates.items())
                               if cadence in (None, name) and (unit := over_limit(limit, est)) is not None],
            })
        return out


def cadence_limits(registry: Any) -> dict[str, Limit]:
    """Per-cadence daily limits from the registry (`budget_tokens_daily`, `budget_usd_daily`)."""
    out: dict[str, Limit] = {}
    for name in registry.names():
        cadence = registry.get(name)
        if cadence is not None and (cadence.budget_tokens_daily is not None or cadence.budget_usd_daily is not None):
            out[name] = Limit(cadence.budget_tokens_daily, cadence.budget_usd_daily)
    return out
