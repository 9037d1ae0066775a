"""`maestro circuit list|reset|open`: the per-cadence circuit breakers and the auth halt."""

from __future__ import annotations

import difflib
import json

import click

from maestro_py.bus.events import EventLog
from maestro_py.bus.store import Bus
from maestro_py.bus.tick import CADENCE_RE
from maestro_py.cli.common import (EX_USAGE, CliError, Context, complete_cadence, load_breakers, open_circuits,
                                   pass_ctx, registry_or_none)
from maestro_py.clock import MAX_NUMBER, SystemClock, iso
from maestro_py.errors import TickInvalid, TickNotQueued
from maestro_py.ops import when
from maestro_py.ops.ticks import held_ticks
from maestro_py.ops.views import quota_line
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD
from maestro_py.redact import Redactor
from maestro_py.state import observe


@click.group()
def circuit() -> None:
    """Inspect and operate the per-cadence circuit breakers and the auth halt."""


@circuit.command("list", short_help="Open and half-open circuits, the halts among them")
@click.option("--json", "as_json", is_flag=True, help="Print the open circuits as JSON.")
@pass_ctx
def circuit_list(c: Context, as_json: bool) -> None:
    """Open and half-open circuits (the auth halt shows as `_auth`, a missing `claude` as `_claude`)."""
    open_ = {name: circ.to_json() for name, circ in open_circuits(c).items()}
    if as_json:
        click.echo(json.dumps(open_, indent=2))
        return
    if not open_:
        click.echo("no open circuits")
    for name, doc in open_.items():
        if name == QUOTA_HOLD:
            click.echo(quota_line(doc, SystemClock().now()))
            continue
        if name == CLAUDE_MISSING:
            click.echo(f"CLAUDE MISSING (all spawning stopped until it can be started, or reset): "
                       f"{doc['last_error']}")
            continue
        label = "AUTH HALT (all spawning stopped)" if name == AUTH_HALT else name
        until = when.local(doc["open_until"]) if doc["open_until"] else \
            "reset" + (" or credentials change" if name == AUTH_HALT else "")
        click.echo(f"{label}: {doc['state']} until {until}; failures={doc['failures']}; last error: {doc['last_error']}")


@circuit.command("reset", short_help="Close a circuit (or --all) and release the ticks it held")
@click.argument("cadence", required=False, shell_complete=complete_cadence)
@click.option("--all", "all_", is_flag=True, help="Close every circuit and lift the auth halt.")
@click.option("--keep-backoff", is_flag=True,
              help="Leave the queued ticks the breaker or backoff held waiting until their retry times.")
@pass_ctx
def circuit_reset(c: Context, cadence: str | None, all_: bool, keep_backoff: bool) -> None:
    """Close CADENCE's circuit (or all of them with --all) and release the queued ticks it held."""
    if bool(cadence) == all_:
        raise CliError("give a CADENCE or --all (not both)", EX_USAGE)
    breakers, file = load_breakers(c)
    registry = registry_or_none(c)  # an invalid registry refuses nothing here: `maestro doctor` names it
    if cadence is not None and cadence not in breakers.circuits and registry is not None and not registry.knows(cadence):
        raise CliError(f"no cadence and no circuit named {cadence!r} (`maestro circuit list`, `maestro cadences`)",
                       EX_USAGE)
    closed = breakers.reset(None if all_ else cadence)
    now = SystemClock().now()
    c.layout.ensure()
    release = not keep_backoff and (all_ or cadence not in (AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD))
    doc = breakers.to_doc(now)
    alive = observe(c.layout, now).alive
    if release and alive:
        # The running daemon ends these cadences' backoff too (`Guardrails.sync`), then drops the key.
        doc = {**(doc or {"generated": iso(now), "open": {}}), "released": ["*"] if all_ else [cadence]}
    file.save(doc)
    click.echo(f"closed: {', '.join(closed)}" if closed else "nothing was open")
    held = held_ticks(c.layout, None if all_ else cadence, now)
    if not held:
        return
    if not release:
        click.echo(f"{len(held)} queued tick(s) keep the retry times the breaker or backoff gave them (--keep-backoff)")
        return
    bus = Bus(c.layout, events=EventLog(c.layout, redactor=Redactor(c.env)))
    released = []
    for tick_id in held:
        try:
            released.append(bus.release(tick_id, reason=f"circuit reset {'--all' if all_ else cadence} by operator"))
        except (TickNotQueued, TickInvalid):
            continue  # claimed (or settled) meanwhile: nothing to release
    if released:
        when = "at the daemon's next loop" if alive else "once a daemon runs (`maestro run`)"
        click.echo(f"released {len(released)} queued tick(s) the breaker or backoff held; they run {when}: "
                   f"{', '.join(t.id for t in released)}")


@circuit.command("open", short_help="Open a cadence's circuit by hand (--for SECONDS)")
@click.argument("cadence", shell_complete=complete_cadence)
@click.option("--for", "seconds", type=click.FloatRange(min=0, min_open=True, max=MAX_NUMBER), default=None,
              help="Seconds to stay open (default: until reset).")
@pass_ctx
def circuit_open(c: Context, cadence: str, seconds: float | None) -> None:
    """Open CADENCE's circuit by hand: its ticks wait in the inbox without burning attempts."""
    if not CADENCE_RE.match(cadence):
        raise CliError(f"invalid cadence name {cadence!r}", EX_USAGE)
    known = c.registry().names()
    if cadence not in known:  # a typo would open a circuit nothing ever reads
        near = difflib.get_close_matches(cadence, known, n=1)
        raise CliError(f"no cadence {cadence!r}" + (f"; did you mean {near[0]!r}?" if near else ""), EX_USAGE)
    breakers, file = load_breakers(c)
    circ = breakers.open_manually(cadence, SystemClock().now(), seconds)
    c.layout.ensure()
    file.save(breakers.to_doc(SystemClock().now()))
    until = when.local(circ.open_until) if circ.open_until else "reset"
    click.echo(f"{cadence}: open until {until}")
