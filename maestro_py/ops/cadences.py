"""`maestro cadences`: each cadence as an operator wants it at a glance: what it runs and when it fires next, how
its last run ended and cost, what it spent today, and what holds it now. Nothing here writes.

Sources: the registry and `cron.py` (next fire, in local time or the cadence's `timezone`), the settled ticks in `done/` and `dlq/` (the last
outcome), the ledger (the last run's cost, today's spend), `circuit-open.json` (its breaker and the global holds)
and the queued ticks (those that wait for a retry time a failure set: the backoff or the breaker).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from zoneinfo import ZoneInfo
from typing import Any

from maestro_py.bus.dlq import REASON_SUFFIX
from maestro_py.bus.fsio import scan_dir
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.clock import iso, parse_iso
from maestro_py.errors import TickInvalid
from maestro_py import cron
from maestro_py.ops import ticks
from maestro_py.ops.views import open_circuits
from maestro_py.paths import Folder, Layout
from maestro_py.policy.breaker import Circuit
from maestro_py.policy.gates import Hold, Refusal
from maestro_py.policy.budget import local_zone, window_bounds
from maestro_py.registry import Registry
from maestro_py.session.ledger import Ledger

# Gates that hold every cadence's runs alike: shown once, above the table.
EVERY_CADENCE = frozenset((Refusal.EMERGENCY_STOP, Refusal.AUTH_HALT, Refusal.CLAUDE_MISSING, Refusal.QUOTA_HOLD,
                           Refusal.GOVERNOR_UNAVAILABLE))


def overview(layout: Layout, registry: Registry, now: datetime, held: Mapping[str, Hold] | None = None) -> dict[str, Any]:
    """{"holds": what stops every spawn now, "cadences": one entry per cadence, by name}. With `held` (the gate that
    holds each cadence's runs now, `ops.gates.holds`: the daemon's own answer), each cadence's `held_by` says it;
    "holds" are those that hold every cadence."""
    names = registry.names()
    circuits = open_circuits(layout)
    last = last_outcomes(layout, names)
    spend = _spend(layout, now)
    queue = ticks.queued(layout, now)
    holds: dict[str, str] = {}
    out = []
    for name in names:
        cadence = registry.get(name)
        if cadence is None:
            continue
        entry: dict[str, Any] = {"cadence": name, "mode": cadence.mode, "schedule": cadence.schedule,
                                 "timezone": cadence.timezone, "next_fire": None, "schedule_error": None}
        if cadence.schedule:
            try:
                fire = cron.next_fire(cadence.schedule, now, ZoneInfo(cadence.timezone) if cadence.timezone else None)
                entry["next_fire"] = iso(fire) if fire else None
            except (cron.CronError, ValueError) as exc:  # loaded before the registry checked schedules in full
                entry["schedule_error"] = str(exc)
        hold = (held or {}).get(name)
        if hold is not None and hold.refusal in EVERY_CADENCE:
            holds.setdefault(hold.gate, hold.line())
        mine = [t for t in queue if t["cadence"] == name]
        retry = [t["not_before"] for t in mine if t["waiting"] and t["wait"] == "retry"]
        entry.update({
            "queued": len(mine),
            "last": last.get(name),
            "last_cost": spend["last"].get(name),
            "today": spend["today"].get(name, {"runs": 0, "cost_usd": 0.0, "cost_unknown_runs": 0}),
            "circuit": _circuit(circuits.get(name)),
            "retry_wait_until": max(retry) if retry else None,  # the backoff or breaker, as its ticks carry it
            "held_by": hold.to_json() if hold is not None else None,  # inline work runs through every hold
            "permissions": cadence.permissions.line() if cadence.mode != "inline" else None,
        })
        out.append(entry)
    return {"holds": list(holds.values()), "cadences": out}


def last_outcomes(layout: Layout, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per cadence, how its latest settled tick ended (`done/` or `dlq/`): outcome, when, tick id, reason. Files are
    read newest first and the reading stops once every cadence is found."""
    wanted = set(names)
    entries = []
    for folder in (Folder.DONE, Folder.DLQ):
        for entry in scan_dir(layout.folder(folder)):
            if not entry.name.endswith(".json") or entry.name.endswith(REASON_SUFFIX):
                continue
            try:
                entries.append((entry.stat(follow_symlinks=False).st_mtime, folder, entry))
            except FileNotFoundError:
                continue
    found: dict[str, dict[str, Any]] = {}
    for _, folder, entry in sorted(entries, key=lambda e: e[0], reverse=True):
        if not wanted - found.keys():
            break
        try:
            tick, _ = read_tick_file(entry.path, entry.name[:-5])
        except (TickInvalid, FileNotFoundError):
            continue
        if tick.cadence not in wanted or tick.cadence in found or not tick.history:
            continue
        final = tick.history[-1]
        outcome, reason = final.get("outcome"), final.get("reason")
        if folder is Folder.DLQ:
            outcome, reason = "dead_letter", tick.dlq_reason or reason
        found[tick.cadence] = {"outcome": outcome, "at": final.get("at"), "tick": tick.id, "reason": reason}
    return found


def _spend(layout: Layout, now: datetime) -> dict[str, dict[str, Any]]:
    """Per cadence: its last ledger row's figures, and today's (local day) measured spend with the unmeasured runs."""
    start, _ = window_bounds("daily", now, local_zone())
    last: dict[str, dict[str, Any]] = {}
    today: dict[str, dict[str, Any]] = {}
    for row in Ledger(layout.ledger_file).rows():
        name = str(row.get("cadence") or "")
        try:
            ts = parse_iso(str(row["ts"]))
        except (KeyError, ValueError):
            continue
        last[name] = {"at": row["ts"], "cost_usd": row.get("cost_usd"), "tokens": row.get("total_tokens"),
                      "charged_usd": row.get("charged_usd"), "ok": row.get("ok"), "denials": row.get("denials")}
        if ts >= start:
            day = today.setdefault(name, {"runs": 0, "cost_usd": 0.0, "cost_unknown_runs": 0})
            day["runs"] += 1
            if isinstance(row.get("cost_usd"), (int, float)):
                day["cost_usd"] = round(day["cost_usd"] + row["cost_usd"], 6)
            else:
                day["cost_unknown_runs"] += 1
    return {"last": last, "today": today}


def _circuit(circuit: Circuit | None) -> dict[str, Any] | None:
    if circuit is None:
        return None
    doc = circuit.to_json()
    return {k: doc[k] for k in ("state", "open_until", "failures", "last_error", "manual")}
