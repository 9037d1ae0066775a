"""Runs as an operator reads them: the sub-sessions that settled, newest first, and those running now.

The one read-model of `maestro runs` and the status page's "Runs" table. A settled run is a ledger row (tokens,
cost, exit, duration, denials), read from the end of the ledger (then its monthly archives), so the last runs of
a large ledger cost what they weigh. What became of the run's tick comes from the ledger itself (a later row of
the same tick: it ran again, `retried` under a new attempt or `requeued` under the same one) and, for a tick's last
run, from the bus: the folder it is in now (`dlq/`: a dead letter; `inbox/`: a retry, with its time; `claimed/`:
running again) and, for a failed run, its history entry's failure class. Only the ticks of the runs listed are
looked up, and no run's log is read. A run the daemon reports live in its status file (`state.observe`) comes
first, as `running`. Cost unmeasured is `None` (shown as unknown with what the budget charged), never 0.
Nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from maestro_py.bus.store import Bus
from maestro_py.bus.tick import Tick
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.clock import iso, parse_iso
from maestro_py.errors import TickInvalid
from maestro_py.ops.cost import ledger_files
from maestro_py.ops.when import duration, local
from maestro_py.paths import Folder, Layout
from maestro_py.session.ledger import Ledger
from maestro_py.state import observe

LIMIT = 50  # runs listed when neither -n nor --since is given (the page's table too)
SLACK = timedelta(minutes=5)  # rows are appended as runs settle: a row this much older than --since ends the read
LOOKS = 3  # a tick that moved between two folders while it was read is looked for again


@dataclass(frozen=True)
class Query:
    """Which runs: of one cadence, settled since a time, failed ones only, at most `limit` (None: all)."""

    cadence: str | None = None
    since: datetime | None = None
    failed: bool = False
    limit: int | None = LIMIT


def listing(layout: Layout, now: datetime, query: Query = Query()) -> list[dict[str, Any]]:
    """The runs `query` asks for: those running now first (not with `failed`), then the settled ones, newest
    first (in the order they settled), at most `query.limit` in all. Each is a JSON-ready dict, times in UTC ISO:
    tick, cadence, attempt, state (running|settled), outcome (running|ok|failed), then (what became of the tick
    after a failed run: retried, requeued, retry, running again, dead letter, or its last outcome), retry_at,
    failure (the failure class or error), folder (where the tick is now), started, ended, duration_ms, exit_code,
    signal, tokens, cost_usd, metered, charged_usd, denials, run_id, pid (running only)."""
    limit = query.limit
    running = [] if query.failed else _running(layout, now, query)
    if limit is not None:
        running = running[:limit]
    settled, newest = _settled(layout, query, None if limit is None else limit - len(running),
                               {r["tick"] for r in running})
    # The status file is rewritten a moment after a settle: a run it still lists may have its row already.
    running = [r for r in running if not _settled_since(newest.get(r["tick"]), r)]
    _follow_ticks(layout, settled)
    return running + settled


def _running(layout: Layout, now: datetime, query: Query) -> list[dict[str, Any]]:
    """The daemon's live sub-sessions (only while it is alive: a dead daemon's status lists runs that are not)."""
    seen = observe(layout, now)
    if not seen.running or seen.doc is None:
        return []
    out = []
    for live in seen.doc.get("live_subsessions") or []:
        if not isinstance(live, dict) or (query.cadence is not None and live.get("cadence") != query.cadence):
            continue
        started = _time(live.get("started"))
        out.append({**_blank(live), "state": "running", "outcome": "running", "folder": Folder.CLAIMED.value,
                    "started": iso(started) if started else None, "pid": live.get("pid"),
                    "duration_ms": round((now - started).total_seconds() * 1000) if started else None})
    return sorted(out, key=lambda r: r["started"] or "", reverse=True)


def _settled_since(newest: tuple[Any, datetime] | None, live: dict[str, Any]) -> bool:
    """The tick's newest ledger row is this live run's own (same attempt, settled after it started)."""
    if newest is None or live["started"] is None:
        return False
    return newest[0] == live["attempt"] and newest[1] >= parse_iso(live["started"])


def _settled(layout: Layout, query: Query, limit: int | None, running: set[str]
             ) -> tuple[list[dict[str, Any]], dict[str, tuple[Any, datetime]]]:
    """Ledger rows as runs, newest first, each knowing from the rows after it whether its tick ran again (`then`);
    and each tick's newest row read, as (attempt, ts)."""
    out: list[dict[str, Any]] = []
    newest: dict[str, tuple[Any, datetime]] = {}
    if limit is not None and limit <= 0:
        return out, newest
    next_attempt: dict[str, Any] = {}  # tick -> attempt of its next run (every row read counts, kept or not)
    for row, ts in _rows(layout, query):
        tick = str(row.get("tick") or "")
        later = next_attempt.get(tick, _NONE) if tick else _NONE
        if tick:
            next_attempt[tick] = row.get("attempt")
            newest.setdefault(tick, (row.get("attempt"), ts))
        if not _wanted(row, ts, query):
            continue
        run = _run(row, ts)
        if later is not _NONE:
            run["then"] = "retried" if _later_attempt(later, run["attempt"]) else "requeued"
        elif tick in running and not run["ok"]:
            run["then"] = "running again"
        out.append(run)
        if limit is not None and len(out) >= limit:
            break
    return out, newest


_NONE: Any = object()  # no later row of the tick


def _later_attempt(later: Any, attempt: Any) -> bool:
    """The tick's next run had a later attempt number: this one burnt an attempt (a retry), not a requeue."""
    return isinstance(later, int) and isinstance(attempt, int) and later > attempt


def _rows(layout: Layout, query: Query) -> Iterator[tuple[dict[str, Any], datetime]]:
    """(row, its time) newest first: the current ledger from its end, then the archives, newest month first; a row
    found twice (a rotation cut short) once. With `since`, reading stops at the first row SLACK older than it."""
    needle = json.dumps(query.cadence).encode() if query.cadence is not None else None
    floor = query.since - SLACK if query.since is not None else None
    seen: set[tuple[Any, ...]] = set()
    for path in reversed(ledger_files(layout, query.since)):
        for row in Ledger(path).newest_first(needle):
            ts = _time(row.get("ts"))
            if ts is None:
                continue
            if floor is not None and ts < floor:
                return
            key = (row.get("ts"), row.get("tick"), row.get("attempt"), row.get("run_id"))
            if key in seen:
                continue
            seen.add(key)
            yield row, ts


def _wanted(row: dict[str, Any], ts: datetime, query: Query) -> bool:
    if query.cadence is not None and row.get("cadence") != query.cadence:
        return False
    if query.failed and row.get("ok") is True:
        return False
    return query.since is None or ts >= query.since


def _blank(source: dict[str, Any]) -> dict[str, Any]:
    """Every field of a listed run, unknown."""
    return {"tick": str(source.get("tick") or ""), "cadence": str(source.get("cadence") or ""),
            "attempt": source.get("attempt"), "state": None, "outcome": None, "ok": None, "then": None,
            "retry_at": None, "failure": None, "folder": None, "started": None, "ended": None, "duration_ms": None,
            "exit_code": None, "signal": None, "tokens": None, "cost_usd": None, "metered": None,
            "charged_usd": None, "denials": None, "run_id": source.get("run_id"), "pid": None}


def _run(row: dict[str, Any], ended: datetime) -> dict[str, Any]:
    """One ledger row as a settled run."""
    ms = _number(row.get("duration_ms"))
    ms = ms if ms is not None and ms >= 0 else None
    ok = row.get("ok") is True
    cost, charged = _number(row.get("cost_usd")), _number(row.get("charged_usd"))
    denials = row.get("denials") if isinstance(row.get("denials"), dict) else None
    tokens = row.get("total_tokens")
    return {**_blank(row), "state": "settled", "outcome": "ok" if ok else "failed", "ok": ok,
            "failure": None if ok else (str(row["error"]) if row.get("error") else None),
            "started": iso(ended - timedelta(milliseconds=ms)) if ms is not None else None, "ended": iso(ended),
            "duration_ms": ms, "exit_code": row.get("exit_code"), "signal": row.get("signal"),
            "tokens": tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
            "cost_usd": cost, "metered": row.get("metered", cost is not None), "charged_usd": charged,
            "denials": denials if denials and denials.get("count") else None}


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _time(value: Any) -> datetime | None:
    try:
        return parse_iso(str(value))
    except ValueError:
        return None


# -- what became of each listed run's tick: the bus ------------------------------------------------------------

def _follow_ticks(layout: Layout, runs: list[dict[str, Any]]) -> None:
    """Where each listed run's tick is now; for a failed run, why (its history entry's failure class) and, if it
    was the tick's last run, what the tick did next. One look-up per tick listed; a tick file is read only for a
    failed run."""
    bus = Bus(layout)
    where: dict[tuple[str, bool], tuple[Folder | None, Tick | None]] = {}
    for run in runs:
        tick = run["tick"]
        if not tick:
            continue
        key = (tick, not run["ok"])
        if key not in where:
            where[key] = _where(bus, tick, read=not run["ok"])
        folder, doc = where[key]
        run["folder"] = folder.value if folder is not None else None
        if run["ok"] or doc is None:
            continue
        entry = _entry(doc, run)
        if entry is not None and entry.get("failure_class"):
            run["failure"] = str(entry["failure_class"])
        if run["then"] is None:  # no later row: the tick's last run
            run["then"], run["retry_at"] = _next(folder, doc, run["attempt"])


def _where(bus: Bus, tick_id: str, *, read: bool) -> tuple[Folder | None, Tick | None]:
    """The folder holding the tick and, if `read`, the tick as read there (None where pruned or unreadable)."""
    for _ in range(LOOKS):
        place = bus.whereis(tick_id)
        if place is None:
            return None, None
        if not read:
            return place[0], None
        try:
            return place[0], read_tick_file(place[1], tick_id)[0]
        except FileNotFoundError:
            continue  # it moved on while we looked
        except TickInvalid:
            return place[0], None
    return None, None


def _entry(tick: Tick, run: dict[str, Any]) -> dict[str, Any] | None:
    """The tick's history entry that settled this run: of its attempt, a failure, recorded at or after its row."""
    ended = run["ended"]
    for entry in tick.history:
        if entry.get("attempt") == run["attempt"] and str(entry.get("outcome", "")).startswith("failed") \
                and str(entry.get("at") or "") >= ended[:19]:
            return entry
    return None


def _next(folder: Folder | None, tick: Tick, attempt: Any) -> tuple[str | None, str | None]:
    """(what the tick did after its last run failed, its retry time): from the folder it is in now."""
    if folder is Folder.DLQ:
        return "dead letter", None
    if folder is Folder.CLAIMED:
        return "running again", None
    if folder is Folder.INBOX:
        burnt = isinstance(attempt, int) and tick.attempts >= attempt
        return ("retry" if burnt else "requeued"), tick.not_before
    if folder is Folder.DONE:
        outcome = str(tick.history[-1].get("outcome")) if tick.history else None
        return (outcome if outcome not in (None, "failed") else None), None
    return None, None


# -- the words: the CLI's columns and the page's cells ---------------------------------------------------------

COLUMNS = ("started", "tick", "cadence", "attempt", "duration", "outcome", "exit", "tokens", "cost", "denials")


def cells(run: dict[str, Any]) -> dict[str, str]:
    """A run as an operator reads it, one text per column (times local, as every human-facing output shows them):
    unmeasured tokens and cost say `unknown` (with what the budget charged), never 0."""
    return {"started": local(run["started"]), "tick": run["tick"] or "-", "cadence": run["cadence"] or "-",
            "attempt": str(run["attempt"]) if run["attempt"] is not None else "-",
            "duration": duration(run["duration_ms"]) + (" so far" if run["state"] == "running" else ""),
            "outcome": outcome(run), "exit": _exit(run), "tokens": _tokens(run), "cost": _cost(run),
            "denials": _denials(run)}


def outcome(run: dict[str, Any]) -> str:
    """`ok`, `running`, `failed (transient) → retry at 2026-12-01 14:05:00 CET`, `failed (auth) → dead letter`."""
    if run["state"] == "running" or run["ok"]:
        return str(run["outcome"])
    words = "failed" + (f" ({run['failure']})" if run["failure"] else "")
    then = run["then"]
    if then == "retry":
        then = f"retry at {local(run['retry_at'])}" if run["retry_at"] else "retry now"
    return f"{words} → {then}" if then else words


def _exit(run: dict[str, Any]) -> str:
    if run["signal"]:
        return f"signal {run['signal']}"
    return str(run["exit_code"]) if run["exit_code"] is not None else "-"


def _tokens(run: dict[str, Any]) -> str:
    if run["state"] == "running":
        return "-"
    return f"{run['tokens']:,}" if run["tokens"] is not None else "unknown"


def _cost(run: dict[str, Any]) -> str:
    if run["state"] == "running":
        return "-"
    if run["cost_usd"] is not None:
        return f"${run['cost_usd']:.4f}"
    return f"unknown (charged ${run['charged_usd']:.4f})" if run["charged_usd"] else "unknown"


def _denials(run: dict[str, Any]) -> str:
    found = run["denials"]
    if not found:
        return "-"
    tools = sorted({str(t) for t in found.get("tools") or []})
    return f"{found['count']}" + (f": {', '.join(tools)}" if tools else "")
