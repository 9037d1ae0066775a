"""`maestro tick show|log|cancel|retry-now ID`: one tick, found by a shortened id if need be.

Ids may be shortened (`ops.ticks.resolve`). What a tick holds came partly from a run's output: it reaches the
terminal through `logview.escape`, as in `maestro dlq show`. Cancel and retry-now move the tick through the bus
(`Bus.cancel`, `Bus.release`), which takes it out of `inbox/` by a rename as a claim does, so a daemon claiming it
at the same moment either runs it or does not see it, never both; a running (claimed) tick is never touched. `log`
reads a run's log files (`ops.runlogs`, rendered by `ops.transcript`), never the whole of one at once.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from maestro_py.bus.events import EventLog
from maestro_py.bus.logview import escape
from maestro_py.bus.store import Bus
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.cli.common import (CliError, Context, complete_queued_id, complete_running_id, complete_tick_id,
                                   pass_ctx, tick_id_arg)
from maestro_py.clock import SystemClock, parse_iso
from maestro_py.errors import TickInvalid, TickNotQueued
from maestro_py.ops import runlogs, ticks, when
from maestro_py.paths import Folder
from maestro_py.redact import Redactor

if TYPE_CHECKING:
    from maestro_py.policy.gates import Hold

VALUE_WIDTH = 160  # a longer history value (a stderr tail) is cut here; --json shows it whole
NOT_QUEUED_HINTS = {
    "running": "it is running now (claimed): `maestro tick kill` ends that run alone, or wait for it to settle",
    "done": "it has settled already",
    "dead_letter": "it is a dead letter: `maestro dlq replay` or `maestro dlq purge`",
}


@click.group()
def tick() -> None:
    """Show, log, cancel or run now one tick (ids may be shortened, as in git)."""


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


@tick.command("log", short_help="A run's output as a person reads it (--raw, --stderr, --follow)")
@click.argument("tick_id", shell_complete=complete_tick_id)
@click.option("--raw", is_flag=True, help="The log as the CLI wrote it (stream-json), secrets masked.")
@click.option("--stderr", "on_stderr", is_flag=True, help="The run's stderr log instead of its stdout.")
@click.option("-f", "--follow", is_flag=True,
              help="Follow a running tick's run as its log grows, until the tick settles.")
@click.option("--attempt", type=click.IntRange(min=1), default=None, help="This attempt's run (default: the last).")
@pass_ctx
def tick_log(c: Context, tick_id: str, raw: bool, on_stderr: bool, follow: bool, attempt: int | None) -> None:
    """Print a run's output: the assistant's text, one line per tool call, result, denial and retry, and the
    result's turns, tokens and cost (`--raw`: the stream as written; `--stderr`: the stderr log)."""
    full = tick_id_arg(c, tick_id)
    try:
        found = runlogs.find(c.layout, full)
    except TickInvalid as exc:
        raise CliError(f"tick {full} cannot be read: {exc}") from None
    if found is None:
        raise CliError(f"tick {full} was settled and pruned while it was being read")
    folder, current = found
    redactor = Redactor(c.env)
    which = "stderr" if on_stderr else "stdout"

    def sink_for(run: runlogs.Run) -> runlogs.Sink:
        path = run.stderr if on_stderr else run.stdout
        click.echo(escape(f"==> attempt {run.attempt} of tick {full} ({current.cadence}): "
                          + (str(path) if path else f"no {which} log (the run wrote nothing there)")), err=True)
        if raw:
            return runlogs.Raw(_raw_out, redactor)
        return (runlogs.Plain if on_stderr else runlogs.Shown)(lambda entry: click.echo(escape(entry.text)), redactor)

    runs = runlogs.runs(c.layout, current)
    if not follow:
        run = runlogs.pick(runs, attempt)
        if run is None:
            raise CliError(_no_log(full, folder, runs, attempt))
        path = run.stderr if on_stderr else run.stdout
        sink = sink_for(run)
        settled = run != runs[-1] or not runlogs.running(Bus(c.layout), full)
        if path is not None:
            runlogs.show(path, sink, settled=settled)
        elif not on_stderr and not raw:
            sink.close(settled=settled)
        return
    try:
        shown = runlogs.follow(c.layout, current, sink_for, attempt=attempt, stderr=on_stderr)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a follow ends early
    if shown is None:
        now = runlogs.find(c.layout, full)
        raise CliError(_no_log(full, now[0] if now else folder, runlogs.runs(c.layout, current), attempt))
    where = Bus(c.layout).whereis(full)
    click.echo(f"==> tick {full} " + (f"is in {where[0].value}/" if where else "is gone (pruned)"), err=True)


def _no_log(tick_id: str, folder: Folder, runs: list[runlogs.Run], attempt: int | None) -> str:
    """One line saying why the tick has no log to show."""
    if attempt is not None and runs:
        return (f"tick {tick_id} has no log of attempt {attempt} (runs with a log: "
                f"{', '.join(f'attempt {r.attempt}' for r in runs)})")
    if folder is Folder.INBOX:
        return f"tick {tick_id} has not run yet: it is queued in inbox/"
    if folder is Folder.CLAIMED:
        return f"tick {tick_id} is starting: its run has no log yet (`--follow` waits for it)"
    return (f"tick {tick_id} has no run log: it never ran a sub-session (inline work, cancelled or dead-lettered "
            f"before a run), or its logs were pruned ({folder.value}/)")


def _raw_out(data: bytes) -> None:
    """Bytes as written to a pipe or a file; to a terminal, each line escaped."""
    out = click.get_binary_stream("stdout")
    if sys.stdout.isatty():
        text = data.decode("utf-8", errors="replace")
        data = "\n".join(escape(part) for part in text.split("\n")).encode()
    sys.stdout.flush()
    out.write(data)
    out.flush()


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


@tick.command("kill", short_help="End one running sub-session; the others go on")
@click.argument("tick_id", shell_complete=complete_running_id)
@click.option("--requeue", is_flag=True, help="Put the tick back in inbox/ (its attempt not counted) instead of done/.")
@click.option("--reason", default=None, help="Why (recorded in the tick's history).")
@pass_ctx
def tick_kill(c: Context, tick_id: str, requeue: bool, reason: str | None) -> None:
    """End one running sub-session's whole process tree (as a timeout does), book what it spent, and settle its
    tick: in done/ as "killed" (not retried, not dead-lettered), or with --requeue back in inbox/. The daemon acts on
    it at its next loop; this waits for the settle."""
    from maestro_py.ops import kill

    full = tick_id_arg(c, tick_id)
    try:
        kill.ask(c.layout, full, requeue=requeue, reason=reason, now=SystemClock().now())
    except kill.NotRunning as exc:
        raise CliError(f"cannot kill: {exc}; `maestro tick cancel` settles a queued tick") from None
    where = kill.settled(c.layout, full)
    if where is None:
        raise CliError(f"asked the daemon to kill {full}; it has not settled within {kill.WAIT_SECONDS:g} s "
                       f"(`maestro tick show {full}`)")
    folder, outcome = where
    click.echo(escape(f"killed {full}: in {folder.value}/ with outcome \"{outcome}\""))


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
