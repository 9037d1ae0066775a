"""`maestro logs` and `maestro prune`: read the event log, and bound what the root keeps on disk."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maestro_py.bus import logview
from maestro_py.cli.common import EX_USAGE, CliError, Context, complete_cadence, complete_tick_id, pass_ctx
from maestro_py.clock import SystemClock
from maestro_py.daemon import retention
from maestro_py.ops import when
from maestro_py.state import read_status


@click.command("logs")
@click.option("--cadence", default=None, shell_complete=complete_cadence, help="Only this cadence's events.")
@click.option("--id", "tick_id", default=None, shell_complete=complete_tick_id, help="Only this tick's events.")
@click.option("--level", type=click.Choice(["info", "warn", "error"]), default=None,
              help="This level and above (info < warn < error).")
@click.option("--since", default=None, metavar="WHEN",
              help="Only events from then on: 2h, 90m, 7d, 2w, a date (2026-12-01: local midnight) or an ISO time "
                   "(2026-12-01T10:00: local unless it names its zone).")
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=None,
              help="How many of the last matching events (default 50; with --since, all of them).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events (across midnight) until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON lines.")
@pass_ctx
def logs_cmd(c: Context, cadence: str | None, tick_id: str | None, level: str | None, since: str | None,
             count: int | None, follow: bool, as_json: bool) -> None:
    """Show the event log, one line per event (`ts level stage cadence id key=value…`)."""
    try:
        start = when.parse_since(since, SystemClock().now()) if since is not None else None
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EX_USAGE) from None
    if count is None and start is None:
        count = 50
    flt = logview.Filter(cadence=cadence, tick_id=tick_id, level=level, since=start)

    def out(event: logview.Event) -> None:
        click.echo(event.raw if as_json else logview.format_event(event))

    if not follow:
        for event in logview.last(c.layout, flt, count):
            out(event)
        return
    try:
        logview.follow(c.layout, flt, out, n=count)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Show what would be removed and rotated; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def prune_cmd(c: Context, dry_run: bool, as_json: bool) -> None:
    """Remove old done ticks and per-run logs; rotate last months' event logs and ledger rows."""
    settings = c.settings()
    report = retention.prune(c.layout, now=SystemClock().now(), retention_days=settings.retention_days,
                             max_mb=settings.logs_max_mb, protect=live_logs(c), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_json(c.layout.root), indent=2))
    else:
        for line in report.lines(c.layout.root):
            click.echo(line)
    if report.errors:
        raise CliError(f"{len(report.errors)} error(s) while pruning: {report.errors[0]}")


def live_logs(c: Context) -> set[Path]:
    """The per-run logs of the sub-sessions the daemon reports as running (never pruned)."""
    doc = read_status(c.layout) or {}
    out: set[Path] = set()
    for run in doc.get("live_subsessions") or []:
        log = run.get("stdout_log") if isinstance(run, dict) else None
        if isinstance(log, str) and log:
            out |= {Path(log), Path(log.replace(".stdout.log", ".stderr.log"))}
    return out
