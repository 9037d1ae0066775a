"""`maestro run-now CADENCE [--payload JSON] [--wait] [--timeout S]`: one tick, run now, with or without a daemon.

The tick is enqueued as `maestro enqueue` would (source `run-now`). A running daemon picks it up at its next loop;
with none, this command starts `maestro run --once` as a **subprocess** (the daemon's own lock, signals and process
handling stay in a process of their own; it runs what is runnable now, then exits): in the background without
`--wait`, as a child it waits for with it. A gate that would hold the run for long (an emergency stop, a halt, its
open breaker or backoff, the budget) refuses before anything is queued, saying why (`ops.gates`).

With `--wait` it follows the tick (`ops.follow`) until it settles or an attempt fails, prints the result text, tokens
and cost, and exits 0 only on success: 1 for a failure, a dead letter or a tick that could not run, 124 when
`--timeout` passes first (the tick goes on). Progress goes to stderr, the result to stdout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import click

from maestro_py.bus.events import EventLog
from maestro_py.bus.logview import escape
from maestro_py.bus.store import Bus
from maestro_py.cli.common import (EX_TEMPFAIL, EX_USAGE, CliError, Context, complete_cadence, pass_ctx, payload_arg,
                                   payload_option)
from maestro_py.clock import SystemClock, parse_iso
from maestro_py.errors import InboxFull, TickInvalid
from maestro_py.ops import follow, gates, when
from maestro_py.redact import Redactor
from maestro_py.registry import Cadence
from maestro_py.state import judge, observe

EX_TIMEOUT = 124  # as timeout(1)
POLL_SECONDS = 0.2


@click.command("run-now")
@click.argument("cadence", shell_complete=complete_cadence)
@payload_option
@click.option("--wait", is_flag=True, help="Follow the tick to its end; print the result text, tokens and cost.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="With --wait: stop waiting after S seconds (exit 124). Default: the run's timeout plus a minute.")
@pass_ctx
def run_now(c: Context, cadence: str, payload: str | None, wait: bool, timeout: float | None) -> int:
    """Enqueue one tick for CADENCE and run it now (starting `maestro run --once` if no daemon runs)."""
    data = payload_arg(payload)
    registry = c.registry()
    found = registry.get(cadence)
    if found is None:
        raise CliError(f"unknown cadence {cadence!r}: no entry in cadences.toml and no cadences/{cadence}.md", EX_USAGE)
    settings = c.settings()
    held = gates.refused_by(gates.evaluate(c.layout, c.env, settings, registry, found, SystemClock().now()))
    if held is not None and held.hold is not None and held.hold.lasting:  # it would not lift within a run's time
        raise CliError(f"not queued: {held.gate} would hold it now: {held.why}")
    c.layout.ensure()
    bus = Bus(c.layout, events=EventLog(c.layout, redactor=Redactor(c.env)), max_inbox=settings.max_inbox)
    try:
        tick = bus.enqueue(cadence, source="run-now", payload=data)
    except InboxFull as exc:
        raise CliError(str(exc), EX_TEMPFAIL) from None
    except TickInvalid as exc:
        raise CliError(str(exc), EX_USAGE) from None
    _say(f"queued {tick.id}" + (f" ({held.gate} holds it for now: {held.why})" if held else ""))
    child = _runner(c, background=not wait)
    if not wait:
        click.echo(tick.id)
        _say(f"follow it with `maestro tick show {tick.id[-6:]}`, or use --wait")
        return 0
    limit = timeout if timeout is not None else (found.timeout_seconds or settings.spawn_timeout) + 60
    return _follow(c, found, tick.id, child, time.monotonic() + limit, limit)


def _runner(c: Context, *, background: bool) -> subprocess.Popen[bytes] | None:
    """None if a daemon holds the root (it runs the tick); else a `maestro run --once` started now."""
    verdict = judge(c.layout, SystemClock().now(), c.env)
    if verdict.healthy:
        _say(f"the daemon runs it at its next loop: {verdict.words}")
        return None
    if verdict.seen.lock_pid:
        _say(f"warning: the daemon holding this root is not healthy ({verdict.words}); the tick waits for it")
        return None
    argv = [sys.executable, "-m", "maestro_py", "--root", str(c.layout.root), "run", "--once"]
    if background:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        _say(f"no daemon runs: started `maestro run --once` in the background (pid {proc.pid}); it runs what is "
             "runnable now, then exits")
        return None
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _say(f"no daemon runs: running `maestro run --once` as a subprocess (pid {proc.pid})")
    return proc


def _follow(c: Context, cadence: Cadence, tick_id: str, child: subprocess.Popen[bytes] | None, deadline: float,
            limit: float) -> int:
    """Poll the tick until it ends, the `run --once` child leaves it queued, or the deadline passes."""
    seen, shown = 1, "queued"  # the "enqueued" history entry is not news
    while True:
        look = follow.look(c.layout, tick_id, seen, SystemClock().now())
        if look.merged_into:
            _say(f"merged into {look.merged_into}: a tick of {cadence.name} with the same payload was queued or "
                 f"running already (overlap = {cadence.overlap!r}); following it")
            tick_id, shown = look.merged_into, "queued"
            first = follow.look(c.layout, tick_id, 0, SystemClock().now())
            seen = len(first.tick.history) if first.tick is not None and not first.ended else 0
            continue
        if look.ended:
            return _report(c, look)
        if look.state != shown and look.state == "running" and look.tick is not None:
            _say(f"running (attempt {look.tick.attempts + 1})")
        shown = look.state
        if child is not None and child.poll() is not None:
            again = follow.look(c.layout, tick_id, seen, SystemClock().now())
            if again.ended or again.state != "queued":
                continue
            if observe(c.layout, SystemClock().now()).alive:
                child = None  # another daemon took the root meanwhile: it runs the tick
                continue
            return _not_run(c, cadence, tick_id, child.returncode)
        if time.monotonic() >= deadline:
            _say(f"still {look.state} after {limit:g} s; it goes on (`maestro tick show {tick_id[-6:]}`)"
                 + ("; the `maestro run --once` subprocess keeps running" if child is not None else ""))
            return EX_TIMEOUT
        time.sleep(POLL_SECONDS)


def _not_run(c: Context, cadence: Cadence, tick_id: str, code: int | None) -> int:
    answers = gates.evaluate(c.layout, c.env, c.settings(), c.registry(), cadence, SystemClock().now())
    held = gates.refused_by(answers)
    why = f"{held.gate}: {held.why}" if held else "no gate holds it now; see `maestro logs`"
    _say(f"not run: `maestro run --once` exited ({code}) and left {tick_id} queued ({why})")
    return 1


def _report(c: Context, look: follow.Look) -> int:
    """The end: outcome, the result text, tokens and cost; 0 only for a success."""
    tick = look.tick
    if tick is None:
        click.echo(f"{look.outcome}: {look.reason}")
        return 1
    result = follow.result_of(c.layout, tick, look.entry)
    head = f"{'ok' if look.ok else 'FAILED'}: {tick.cadence} tick {tick.id}, attempt {result['attempt']}"
    if look.outcome not in ("ok", None):
        head += f", {look.outcome}"
    if result["duration_ms"] is not None:
        head += f", {result['duration_ms'] / 1000:.1f} s"
    lines = [head]
    if not look.ok and look.reason:
        lines.append(f"reason: {look.reason}")
    if look.state == "queued" and tick.not_before:
        lines.append(f"it is back in inbox/: attempt {tick.attempts} failed; it retries at "
                     f"{when.local(parse_iso(tick.not_before))} (`maestro tick retry-now {tick.id[-6:]}`)")
    elif look.state == "queued":
        lines.append("it is back in inbox/ (the attempt did not count) and runs again when the gates allow")
    if result["text"]:
        lines += ["", *result["text"].rstrip("\n").split("\n"), ""]
    if result["mode"] not in ("inline",) and (result["tokens"] is not None or result["cost_usd"] is not None
                                              or result["metered"] is False):
        lines.append(_spend(result))
    if result["log"]:
        lines.append(f"log: {result['log']}")
    for line in lines:
        click.echo(escape(line))
    return 0 if look.ok else 1


def _spend(result: dict[str, Any]) -> str:
    """`tokens: 1,290  cost: $0.0076 (claude-opus-4-8)`, or what is unknown and what was charged instead."""
    tokens = f"{result['tokens']:,}" if isinstance(result["tokens"], int) else "unknown"
    usd = f"${result['cost_usd']:.4f}" if isinstance(result["cost_usd"], (int, float)) else "unknown"
    models = ", ".join(sorted(result["per_model"] or {}))
    line = f"tokens: {tokens}  cost: {usd}" + (f" ({models})" if models else "")
    if result["metered"] is False:
        line += f"; not measured: the budget charged its reservation (${result['charged_usd'] or 0:.4f})"
    return line


def _say(text: str) -> None:
    click.echo(escape(text), err=True)
