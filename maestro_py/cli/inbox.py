"""`maestro inbox list`: the queued ticks, oldest first, and what each waits for."""

from __future__ import annotations

import json

import click

from maestro_py.bus.logview import escape
from maestro_py.cli.common import CliError, Context, pass_ctx
from maestro_py.clock import SystemClock, parse_iso
from maestro_py.ops import ticks, when


@click.group()
def inbox() -> None:
    """List the queued ticks."""


@inbox.command("list", short_help="Queued ticks, oldest first, with why each waits")
@click.option("--json", "as_json", is_flag=True, help="Print the queued ticks as JSON.")
@pass_ctx
def inbox_list(c: Context, as_json: bool) -> None:
    """Queued ticks, oldest first: id, cadence, attempts, not-before (local time) and source."""
    from maestro_py.ops import gates, views

    now = SystemClock().now()
    try:
        registry = c.registry()
        with gates.PersistedState(c.layout, c.env, c.settings(), registry, now) as state:
            held = gates.holds(state, registry, now)
        items = ticks.queued(c.layout, now, held.get)
    except (CliError, views.CircuitFileInvalid) as exc:  # the queue is still worth listing: say why gates are unknown
        click.echo(escape(f"(which gate holds each tick is unknown: {exc})"), err=True)
        items = ticks.queued(c.layout, now)
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo("inbox is empty")
        return
    for item in items:
        due = ""
        if item["not_before"]:
            at = parse_iso(item["not_before"])
            due = f"not before {when.local(at)} ({when.relative(at, now)}, {item['wait']})" if item["waiting"] else \
                f"due since {when.local(at)}"
        held = item.get("held_by")
        if held is not None:  # due, but a gate holds it: the daemon's own answer (`ops.gates`)
            due = (due + ", " if due else "") + f"held by {held['gate']}: {held['why']}"
        click.echo(escape(f"{item['id']}  {item['cadence']}  attempts={item['attempts']}  "
                          f"{due or 'runnable'}  source={item['source']}"))
    click.echo(f"{len(items)} queued")
