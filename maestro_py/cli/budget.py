"""`maestro budget`: per window and scope, what is allowed, spent, held by live runs and left."""

from __future__ import annotations

import json
from typing import Any

import click

from maestro_py.cli.common import CliError, Context, budget_summary, figure_lines, pass_ctx
from maestro_py.cli.governor import fleet_lines
from maestro_py.ops import when
from maestro_py.policy.budget import never_fits_lines


def fleet_summary(c: Context) -> tuple[list[dict[str, Any]], str | None]:
    """The governor store's scopes (marked `"source": "governor"`), or why they cannot be read."""
    url = c.settings().governor_url
    if not url:
        return [], None
    from maestro_py.clock import SystemClock
    from maestro_py.fleet import open_store
    from maestro_py.fleet.model import StoreUnavailable

    store = open_store(url)
    try:
        rows = store.summary(SystemClock().now())
    except StoreUnavailable as exc:
        return [], f"unavailable: {exc}"
    finally:
        store.close()
    out = [{"source": "governor", **row, "never_fits": []} for row in rows]
    for cadence, hold in _fleet_never_fits(c):  # the store's own answer for each cadence, as the daemon asks it
        answer = hold.detail
        for row in out:
            if (row["scope"], row["window"]) == (answer.scope, answer.window):
                row["never_fits"].append({"cadence": cadence, "reason": hold.why})
    return out, None


def _fleet_never_fits(c: Context) -> list[tuple[str, Any]]:
    """(cadence, hold) for each cadence whose one run the governor store can never admit (`ops.gates`)."""
    from maestro_py.clock import SystemClock
    from maestro_py.ops import gates, views
    from maestro_py.policy.gates import Refusal

    now = SystemClock().now()
    try:
        registry = c.registry()
        out = []
        with gates.PersistedState(c.layout, c.env, c.settings(), registry, now) as state:
            for name in registry.names():
                cadence = registry.get(name)
                for answer in gates.walk(state, cadence, now) if cadence is not None else []:  # inline: none
                    hold = answer.hold
                    if hold is not None and hold.refusal is Refusal.FLEET_BUDGET and hold.never_fits:
                        out.append((name, hold))
        return out
    except (CliError, views.CircuitFileInvalid):
        return []  # `maestro doctor` names what is broken


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print every scope as JSON (governor scopes carry source).")
@pass_ctx
def budget(c: Context, as_json: bool) -> None:
    """Per window and scope: total, spent, reserved, remaining, runs, top cadences, reset time; then the
    governor store's scopes with their top agents and cadences, when MAESTRO_GOVERNOR_URL names one."""
    rows = budget_summary(c)
    fleet, trouble = fleet_summary(c)
    if as_json:
        click.echo(json.dumps(rows + fleet + ([{"source": "governor", "error": trouble}] if trouble else []), indent=2))
        return
    for row in rows:
        click.echo(f"{row['scope']} {row['window']} (resets {when.local(row['resets_at'], seconds=False)}): {row['runs']} runs")
        for line in figure_lines(row):
            click.echo(line)
        if row["top_cadences"]:
            click.echo("  top: " + ", ".join(f"{t['cadence']} ${t['usd']:.4f}" for t in row["top_cadences"]))
        for line in never_fits_lines(row["never_fits"]):
            click.echo(f"  {line}")
    if trouble:
        click.echo(f"governor store: {trouble}")
    for row in fleet:
        click.echo("governor " + fleet_lines(row))
        for entry in row["never_fits"]:
            click.echo(f"  never fits: {entry['cadence']}: {entry['reason']}")
