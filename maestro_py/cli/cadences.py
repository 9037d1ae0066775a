"""`maestro cadences`: every cadence's mode, schedule and next fire, last outcome and cost, today's spend and what
holds it (`ops.cadences.overview`)."""

from __future__ import annotations

import json
from typing import Any

import click

from maestro_py.bus.logview import escape
from maestro_py.cli.common import CliError, Context, pass_ctx
from maestro_py.clock import SystemClock, parse_iso
from maestro_py.ops import when

COLUMNS = ("cadence", "mode", "schedule", "next fire", "last", "last cost", "today", "state")


@click.command("cadences")
@click.option("--json", "as_json", is_flag=True, help="Print every cadence's figures as JSON.")
@pass_ctx
def cadences_cmd(c: Context, as_json: bool) -> None:
    """Each cadence: mode, schedule, next fire (local), last outcome and cost, cost today, breaker/backoff/hold."""
    from maestro_py.ops import cadences, gates, views

    now = SystemClock().now()
    registry = c.registry()
    try:
        with gates.PersistedState(c.layout, c.env, c.settings(), registry, now) as state:
            doc = cadences.overview(c.layout, registry, now, gates.holds(state, registry, now))
    except views.CircuitFileInvalid as exc:
        raise CliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    for hold in doc["holds"]:
        click.echo(escape(f"HELD: {hold} (inline cadences still run)"))
    if not doc["cadences"]:
        click.echo("no cadences: add cadences/<name>.md or a table to cadences.toml")
        return
    rows = [COLUMNS] + [_row(entry, now) for entry in doc["cadences"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        click.echo(escape("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]).rstrip())


def _row(entry: dict[str, Any], now: Any) -> tuple[str, ...]:
    fire = entry["next_fire"]
    next_fire = ("invalid: " + entry["schedule_error"] if entry["schedule_error"] else
                 f"{_short(fire)} ({when.relative(parse_iso(fire), now)})" if fire else "-")
    last = entry["last"]
    last_text = f"{last['outcome']} {when.relative(parse_iso(last['at']), now)}" if last and last.get("at") else "-"
    cost = entry["last_cost"]
    cost_text = "-" if cost is None else (f"${cost['cost_usd']:.4f}" if isinstance(cost["cost_usd"], (int, float))
                                          else "unknown")
    today = entry["today"]
    today_text = "-" if not today["runs"] else (
        f"${today['cost_usd']:.4f}" + ("+?" if today["cost_unknown_runs"] else "") + f" ({today['runs']} runs)")
    schedule = (entry["schedule"] or "-") + (f" ({entry['timezone']})" if entry.get("timezone") else "")
    return (entry["cadence"], entry["mode"], schedule, next_fire, last_text, cost_text, today_text, _state(entry, now))


def _state(entry: dict[str, Any], now: Any) -> str:
    """What holds the cadence now: its breaker, the retry time its ticks wait for, a global hold; else ok."""
    parts = []
    circuit = entry["circuit"]
    if circuit is not None:
        until = f" until {_short(circuit['open_until'])}" if circuit["open_until"] else " until reset"
        parts.append(f"circuit {circuit['state'].replace('_', '-')}"
                     + (until if circuit["state"] == "open" else "")
                     + (" (opened by hand)" if circuit["manual"] else f" ({circuit['failures']} failures)"))
    denied = (entry["last_cost"] or {}).get("denials") or {}
    if denied.get("count"):
        parts.append(f"last run denied {denied['count']} call(s): {', '.join(denied['tools'])}")
    if entry["retry_wait_until"]:
        parts.append(f"retry wait until {_short(entry['retry_wait_until'])}")
    held = entry["held_by"]
    if held:
        parts.append(f"held by {held['gate']}" + (" (never fits)" if held["never_fits"] else ""))
    if entry["queued"]:
        parts.append(f"{entry['queued']} queued")
    return ", ".join(parts) or "ok"


def _short(value: str | None) -> str:
    """Local time without seconds: `2026-12-07 08:00 CET`."""
    return when.local(value, seconds=False)
