"""`maestro tick show|cancel|retry-now ID`: one tick, found by a shortened id if need be.

Ids may be shortened (`ops.ticks.resolve`). What a tick holds came partly from a run's output: it reaches the
terminal through `logview.escape`, as in `maestro dlq show`. Cancel and retry-now move the tick through the bus
(`Bus.cancel`, `Bus.release`), which takes it out of `inbox/` by a rename as a claim does, so a daemon claiming it
at the same moment either runs it or does not see it, never both; a running (claimed) tick is never touched.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from maestro_py.bus.events import EventLog
from maestro_py.bus.logview import escape
from maestro_py.bus.store import Bus
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.cli.common import (CliError, Context, complete_queued_id, complete_tick_id, pass_ctx,
                                   tick_id_arg)
from maestro_py.clock import SystemClock, parse_iso
from maestro_py.errors import TickInvalid, TickNotQueued
from maestro_py.ops import ticks, when
from maestro_py.redact import Redactor

if TYPE_CHECKING:
    from maestro_py.policy.gates import Hold

VALUE_WIDTH = 160  # a longer history value (a stderr tail) is cut here; --json shows it whole
NOT_QUEUED_HINTS = {
    "running": "it is running now (claimed); `maestro stop` ends every run, or wait for it to settle",
    "done": "it has settled already",
    "dead_letter": "it is a dead letter: `maestro dlq replay` or `maestro dlq purge`",
}


@click.group()
def tick() -> None:
    """Show, cancel or run now one tick (ids may be shortened, as in git)."""


@tick.command("show", short_help="Where a tick is: attempts, history, ledger rows, logs")
@click.argument("tick_id", shell_complete=complete_tick_id)
@click.option("--json", "as_json", is_flag=True, help="Print the tick, its runs and log files as JSON.")
@pass_ctx
def tick_show(c: Context, tick_id: str, as_json: bool) -> None:
    """Where a tick is, its attempts, history, ledger rows and log files."""
    full = tick_id_arg(c, tick_id)
    doc = ticks.describe(c.layout, full)
    if doc is None:
        raise CliError(f"tick {full} was settled and pruned while it was being read")
    if doc["state"] == "queued" and doc.get("readable", True):
        held = _holding(c, doc["cadence"], doc.get("not_before"))
        doc["held_by"] = held.to_json() if held is not None else None
    if as_json:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    for line in show_lines(doc, SystemClock().now()):
        click.echo(escape(line))


def show_lines(doc: dict[str, Any], now: Any) -> list[str]:
    """`tick show`'s text (each line escaped by the caller)."""
    lines = [f"tick {doc['id']}: {doc['state'].replace('_', ' ')} ({doc['folder']}/)", f"  file: {doc['path']}"]
    if not doc.get("readable", True):
        return lines + [f"  unreadable: {doc['error']}"]
    trust = "" if doc.get("trusted", True) else " (untrusted: its payload is fenced)"
    lines.append(f"  cadence: {doc['cadence']}   source: {doc['source']}{trust}   enqueued: "
                 f"{when.local(doc['enqueued_at'])}")
    due = doc.get("not_before")
    wait = ""
    if due:
        at = parse_iso(due)
        wait = f"   not before: {when.local(at)} ({when.relative(at, now)}" + (
            f", {doc['wait']})" if doc.get("wait") else ")")
    lines.append(f"  attempts: {doc['attempts']}{wait}")
    held = doc.get("held_by")
    if held:
        lines.append(f"  held by {held['gate']}: {held['why']}" + (f" ({held['lifts']})" if held["lifts"] else ""))
    if doc.get("claimed_by"):
        lines.append(f"  claimed by: {doc['claimed_by']}")
    if doc.get("dlq_reason"):
        lines.append(f"  dead-lettered {when.local(doc.get('dlq_at'))}: {doc['dlq_reason']}")
    if doc.get("payload"):
        lines.append(f"  payload: {json.dumps(doc['payload'], ensure_ascii=False)}")
    lines.append("history:")
    for entry in doc.get("history") or []:
        rest = " ".join(f"{k}={_value(v)}" for k, v in entry.items()
                        if k not in ("at", "attempt", "outcome", "reason") and v is not None)
        reason = f"  {_cut(str(entry['reason']))}" if entry.get("reason") else ""
        lines.append(f"  {when.local(entry.get('at'))}  a{entry.get('attempt')}  {entry.get('outcome')}{reason}"
                     + (f"  {rest}" if rest else ""))
    for row in doc.get("runs") or []:
        lines.append(f"run: attempt {row.get('attempt')}  {'ok' if row.get('ok') else 'failed'}  "
                     f"{_tokens(row.get('total_tokens'))}  {_usd(row.get('cost_usd'))}"
                     + ("" if row.get("metered", True) else f" (unmeasured: charged ${row.get('charged_usd') or 0:.4f})")
                     + (f"  DENIED {row['denials']['count']} call(s): {', '.join(row['denials']['tools'])}"
                        if (row.get("denials") or {}).get("count") else ""))
    lines += [f"log: {path}" for path in doc.get("logs") or []]
    return lines


@tick.command("cancel", short_help="Settle a queued tick in done/ as cancelled")
@click.argument("tick_id", shell_complete=complete_queued_id)
@click.option("--reason", default=None, help="Why (recorded in the tick's history).")
@pass_ctx
def tick_cancel(c: Context, tick_id: str, reason: str | None) -> None:
    """Settle a queued tick in done/ as "cancelled", with an audit entry (never a running one)."""
    full = tick_id_arg(c, tick_id)
    bus = _bus(c)
    try:
        done = bus.cancel(full, reason=reason)
    except TickNotQueued as exc:
        raise CliError(f"cannot cancel: {exc}; {NOT_QUEUED_HINTS.get(exc.state or '', 'nothing to cancel')}") from None
    except TickInvalid as exc:
        raise CliError(f"cannot cancel {full}: not a valid tick ({exc}); moved to dlq/") from None
    click.echo(escape(f"cancelled {done.id} ({done.cadence}): in done/ with outcome \"cancelled\""))


@tick.command("retry-now", short_help="Clear a queued tick's retry time: it runs at the next loop")
@click.argument("tick_id", shell_complete=complete_queued_id)
@pass_ctx
def tick_retry_now(c: Context, tick_id: str) -> None:
    """Clear a queued tick's retry time (not_before) so it runs at the daemon's next loop, with an audit entry."""
    full = tick_id_arg(c, tick_id)
    bus = _bus(c)
    found = bus.whereis(full)
    if found is not None and found[1].parent == bus.inbox:
        try:
            current, _ = read_tick_file(found[1], full)
        except (TickInvalid, FileNotFoundError):
            current = None
        if current is not None and current.not_before is None:
            click.echo(f"{full} is not waiting for a retry time: it runs when the gates allow "
                       f"(`maestro dry-run {current.cadence}` says which would hold it)")
            return
    try:
        released = bus.release(full, reason="retry-now by operator")
    except TickNotQueued as exc:
        raise CliError(f"cannot retry now: {exc}; {NOT_QUEUED_HINTS.get(exc.state or '', 'nothing to run')}") from None
    except TickInvalid as exc:
        raise CliError(f"cannot retry {full}: not a valid tick ({exc}); moved to dlq/") from None
    held = _holding_gate(c, released.cadence)
    click.echo(escape(f"released {released.id} ({released.cadence}): " + (
        f"it still waits: {held}" if held else "it runs at the daemon's next loop")))


def _holding_gate(c: Context, cadence: str) -> str | None:
    """The gate that would hold a due run of `cadence` now, in words; None if none does or it cannot tell."""
    held = _holding(c, cadence, None)
    return f"{held.gate}: {held.why}" if held is not None else None


def _holding(c: Context, cadence: str, not_before: str | None) -> "Hold | None":
    """The gate that holds a queued tick of `cadence` now (`ops.gates.queued_hold`); None if none does or it cannot
    tell (the registry is invalid: `maestro doctor` says why)."""
    from maestro_py.ops import gates

    try:
        registry = c.registry()
    except CliError:
        return None
    return gates.queued_hold(c.layout, c.env, c.settings(), registry, cadence, not_before, SystemClock().now())


def _bus(c: Context) -> Bus:
    """A bus whose audit entries and events mask this root's secrets."""
    return Bus(c.layout, events=EventLog(c.layout, redactor=Redactor(c.env)))


def _value(value: Any) -> str:
    text = value if isinstance(value, str) and value and " " not in value else json.dumps(value, ensure_ascii=False)
    return _cut(text)


def _cut(text: str) -> str:
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 1] + "…"


def _tokens(value: Any) -> str:
    return f"{value:,} tokens" if isinstance(value, int) else "tokens unknown"


def _usd(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, (int, float)) else "cost unknown"
