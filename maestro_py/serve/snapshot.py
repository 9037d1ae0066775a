"""What the status page shows, gathered from the same read-models `maestro status` and `maestro budget` use.

Health is `state.judge`, the judgment `maestro status` exits with and `/healthz` answers; breakers come from
`ops.views.open_circuits`, budget rows from `ops.views.budget_rows`, spend from ledger rows through
`policy.budget.charge_of`, and the runs from `ops.runs.listing` (`maestro runs`), so the page cannot disagree with
the CLI. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from maestro_py.bus.store import Bus
from maestro_py.config import Settings
from maestro_py.ops import cost, runs, views
from maestro_py.paths import Layout
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD
from maestro_py.policy.budget import charge_of, local_zone
from maestro_py.policy.emergency import read_stop_file
from maestro_py.redact import Redactor
from maestro_py.registry import Registry
from maestro_py.state import judge

CHART_DAYS = 30
LAST_RUNS = 50
HOLD_KINDS = {AUTH_HALT: "auth halt", CLAUDE_MISSING: "claude missing", QUOTA_HOLD: "usage-limit hold"}


@dataclass
class Snapshot:
    """Everything on the page, as plain data."""

    root: str
    now: datetime
    health_code: int
    health: str
    emergency_stop: str | None
    queues: dict[str, int]
    live: list[dict[str, Any]]
    breakers: list[dict[str, Any]]
    budget: list[dict[str, Any]]
    runs: list[dict[str, Any]]  # `ops.runs.listing`: running ones first, then the last settled, newest first
    days: list[date]
    cadences: list[str]  # the cadences with a ledger row in the chart's window, sorted
    spend: dict[tuple[date, str], float]  # (local day, cadence) -> dollars charged
    run_counts: dict[tuple[date, str], int]
    problems: list[str] = field(default_factory=list)  # what could not be read (shown, not hidden)
    holds: list[dict[str, Any]] = field(default_factory=list)  # per held cadence: the gate that holds its runs now


def take(layout: Layout, settings: Settings, registry: Registry | None, now: datetime,
         env: Mapping[str, str] | None = None) -> Snapshot:
    """Read everything the page shows, as of `now` (`env`: the root's environment, to walk the gates as the daemon
    would; without it the page shows no holds)."""
    problems: list[str] = []
    health = judge(layout, now)
    doc = health.seen.doc
    circuits: dict[str, Any] = {}
    try:
        circuits = views.open_circuits(layout)
    except views.CircuitFileInvalid as exc:
        problems.append(str(exc))
    breakers = [{"name": name, "kind": HOLD_KINDS.get(name, "circuit breaker"), **circ.to_json(),
                 "words": views.quota_line(circ.to_json(), now) if name == QUOTA_HOLD else None}
                for name, circ in circuits.items()]
    budget = views.budget_rows(layout, settings, registry, now)
    zone = local_zone()
    days = [(now.astimezone(zone) - timedelta(days=back)).date() for back in range(CHART_DAYS - 1, -1, -1)]
    spend, counts = _ledger(layout, now, days[0], zone)
    listed = runs.listing(layout, now, runs.Query(limit=LAST_RUNS))
    return Snapshot(
        root=str(layout.root), now=now, health_code=health.code, health=health.words,
        emergency_stop=read_stop_file(layout.stop_file),
        queues={k: v for k, v in Bus(layout).depths().items() if k != "tmp"},
        live=list((doc or {}).get("live_subsessions") or []) if health.seen.alive else [],
        breakers=breakers, budget=budget, runs=Redactor(env).data(listed) if env is not None else listed, days=days,
        cadences=sorted({cadence for _, cadence in counts}), spend=spend, run_counts=counts, problems=problems,
        holds=_holds(layout, env, settings, registry, now) if env is not None and registry is not None else [],
    )


def _holds(layout: Layout, env: Mapping[str, str], settings: Settings, registry: Registry,
           now: datetime) -> list[dict[str, Any]]:
    """Each cadence whose runs a gate holds now, with that gate's words: the daemon's chain (`ops.gates`)."""
    from maestro_py.ops import gates

    try:
        with gates.PersistedState(layout, env, settings, registry, now) as state:
            return [{"cadence": name, **hold.to_json()} for name, hold in gates.holds(state, registry, now).items()]
    except views.CircuitFileInvalid:
        return []  # shown as a problem already


def _ledger(layout: Layout, now: datetime, first: date, zone: tzinfo | None
            ) -> tuple[dict[tuple[date, str], float], dict[tuple[date, str], int]]:
    """Spend and run counts per (day, cadence) from `first` on."""
    spend: dict[tuple[date, str], float] = {}
    counts: dict[tuple[date, str], int] = {}
    for row in cost.rows(layout, since=datetime.combine(first, time(), zone).astimezone()):  # archives too, once
        charge = charge_of(row)
        if charge is None:
            continue
        day = charge.ts.astimezone(zone).date()
        if day < first or charge.ts > now + timedelta(days=1):
            continue
        key = (day, charge.cadence)
        spend[key] = spend.get(key, 0.0) + charge.usd
        counts[key] = counts.get(key, 0) + 1
    return spend, counts
