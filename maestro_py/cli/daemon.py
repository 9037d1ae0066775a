"""`maestro run` and `maestro status`: start the daemon, and see what it is doing."""

from __future__ import annotations

import json
import sys
import time

import click

from maestro_py.bus.store import Bus
from maestro_py.cli.common import (EX_CONFIG, CliError, Context, budget_summary, fmt_amount, open_circuits,
                                   pass_ctx)
from maestro_py.clock import SystemClock
from maestro_py.config import unknown_settings
from maestro_py.errors import AlreadyRunning, ConfigError
from maestro_py.paths import Folder
from maestro_py.ops import when
from maestro_py.ops.views import quota_line
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD
from maestro_py.policy.budget import never_fits_lines
from maestro_py.registry import Registry, RegistryError
from maestro_py.session.command import auth_fix, claude_fix, prefers_subscription
from maestro_py.state import judge


@click.command()
@click.option("--once", is_flag=True, help="Process everything runnable now, wait for its sub-sessions, exit.")
@click.option("--no-watch", is_flag=True, help="Poll only (no filesystem notifications).")
@click.option("--log-stderr", is_flag=True,
              help="Also write each event as one readable line on stderr (automatic under systemd and launchd).")
@pass_ctx
def run(c: Context, once: bool, no_watch: bool, log_stderr: bool) -> None:
    """Run the daemon: claim ticks and run them until stopped (SIGTERM drains, a second ends at once)."""
    import logging
    import os

    from maestro_py.daemon import console
    from maestro_py.daemon.loop import Daemon  # here, not at the top: `status` must not import the daemon

    # The daemon's own stderr (launchd's StandardErrorPath, journald) says what the event log cannot
    # when the disk under it is full or read-only.
    journal = console.journal_stream(os.environ)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s maestro: %(message)s", stream=sys.stderr)
    if journal:  # journald: each line with its priority
        for handler in logging.getLogger().handlers:
            handler.setFormatter(console.JournalFormatter("%(asctime)s maestro: %(message)s"))
    settings = c.settings()
    c.registry()  # report an invalid registry before taking the lock
    c.layout.ensure()
    try:
        daemon = Daemon(c.layout, settings, c.env, watch=not no_watch)
        if console.wanted(os.environ, log_stderr):
            console.attach(daemon, journal=journal)
        code = daemon.run(once=once)
    except AlreadyRunning as exc:
        raise CliError(str(exc), 1) from None
    except (RegistryError, ConfigError) as exc:
        raise CliError(str(exc), EX_CONFIG) from None
    if code:
        raise CliError("daemon exited with an error", code)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wait-healthy", type=click.FloatRange(0, 3600), default=None, metavar="SECONDS",
              help="Wait up to SECONDS for the daemon to be alive with a fresh heartbeat (for deploy scripts).")
@pass_ctx
def status(c: Context, as_json: bool, wait_healthy: float | None) -> int:
    """Show whether the daemon is alive, queue depths, live sub-sessions and counters.

    Exit 0 only when the daemon is alive and its heartbeat fresh; 3 when no daemon runs; 4 when a process
    holds the root but its heartbeat is stale (stopped, wedged) or missing; 78 when the root's settings are invalid
    (`state.judge`, which `/healthz` answers with too)."""
    try:  # a broken cadences.toml: the daemon keeps running on its previous registry, and status still works
        Registry.load(c.layout)
        registry_error = None
    except RegistryError as exc:
        registry_error = str(exc)
    deadline = time.monotonic() + (wait_healthy or 0.0)
    while True:
        health = judge(c.layout, SystemClock().now(), c.env)
        if health.healthy or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if health.code == EX_CONFIG:
        raise CliError(health.words, EX_CONFIG)
    code, words, doc = health.code, health.words, health.seen.doc
    depths = Bus(c.layout).depths() if c.layout.bus_dir.exists() else {f.value: 0 for f in Folder}
    circuits = open_circuits(c)
    out = {
        "root": str(c.layout.root),
        "daemon": health.daemon_json(),
        "queues": depths,
        "emergency_stop": c.layout.stop_file.exists(),
        "auth_halt": AUTH_HALT in circuits,
        "claude_missing": CLAUDE_MISSING in circuits,
        "circuits": {n: circ.to_json() for n, circ in circuits.items()},
        "budget": budget_summary(c, lenient=True),
        "registry_error": registry_error,
        "status": doc,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return code
    click.echo(f"daemon: {words}")
    if registry_error:
        click.echo(f"REGISTRY INVALID: {registry_error} (a running daemon keeps its previous registry)")
    for line in unknown_settings(c.env):
        click.echo(f"warning: {line}")
    click.echo("queues: " + "  ".join(f"{k}={v}" for k, v in depths.items() if k != "tmp"))
    if out["emergency_stop"]:
        click.echo(f"EMERGENCY STOP is set ({c.layout.stop_file}); `maestro resume` clears it")
    if out["auth_halt"]:
        halt = out["circuits"][AUTH_HALT]
        fix = auth_fix(subscription=prefers_subscription(c.env))
        click.echo(f"AUTH HALT: no sub-session will spawn ({halt['last_error']}); {fix}")
    if out["claude_missing"]:
        missing = out["circuits"][CLAUDE_MISSING]
        click.echo(f"CLAUDE MISSING: no sub-session will spawn ({missing['last_error']}); {claude_fix()}")
    for name, circ in out["circuits"].items():
        if name == QUOTA_HOLD:
            click.echo(quota_line(circ, SystemClock().now()))
        elif name not in (AUTH_HALT, CLAUDE_MISSING):
            until = when.local(circ["open_until"]) if circ["open_until"] else "reset"
            click.echo(f"circuit {name}: {circ['state']} until {until} ({circ['last_error']})")
    if doc:
        for kind, usage in (doc.get("quota") or {}).items():
            if isinstance(usage, dict) and isinstance(usage.get("utilization"), (int, float)):
                click.echo(f"usage {kind}: {usage['utilization']:.0%} ({usage.get('status')}, as of {when.local(usage.get('at'))})")
        if doc.get("restart_required"):
            click.echo(f"RESTART REQUIRED: {', '.join(doc['restart_required'])} changed in .env; the daemon runs "
                       "with the old value until it is restarted")
        gov = doc.get("governor")
        if isinstance(gov, dict):
            if gov.get("available"):
                click.echo(f"governor: {gov.get('store')} as agent {gov.get('agent')}"
                           + (f"; {gov['outbox']} settle(s) waiting to be pushed" if gov.get("outbox") else ""))
            else:
                click.echo(f"GOVERNOR UNAVAILABLE since {when.local(gov.get('since'))}: no sub-session will spawn until "
                           f"{gov.get('store')} answers ({gov.get('reason')}); inline work goes on")
        for run_ in doc.get("live_subsessions", []):
            click.echo(f"running: {run_['cadence']} tick {run_['tick']} pid {run_['pid']} since {when.local(run_['started'])}")
        counters = {k: v for k, v in (doc.get("counters") or {}).items() if v}
        if counters:
            click.echo("counters: " + "  ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    for row in out["budget"]:
        spent, total, left = row["spent"], row["total"], row["remaining"]
        click.echo(f"budget {row['scope']} {row['window']}: spent {spent['tokens']:,} tokens / ${spent['usd']:.4f}"
                   f" of {fmt_amount(total['tokens'], 'tokens')} / {fmt_amount(total['usd'], 'usd')}; remaining "
                   f"{fmt_amount(left['tokens'], 'tokens')} / {fmt_amount(left['usd'], 'usd')}; "
                   f"resets {when.local(row['resets_at'], seconds=False)}")
        for line in never_fits_lines(row["never_fits"]):  # "remaining" alone would read as "it will run"
            click.echo(f"budget {row['scope']} {row['window']}: {line}")
    click.echo(f"ledger: {c.layout.ledger_file}")
    click.echo(f"events: {c.layout.events_dir}/bus-YYYY-MM-DD.jsonl   per-run logs: {c.layout.subsessions_dir}")
    return code
