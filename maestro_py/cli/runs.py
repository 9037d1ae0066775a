"""`maestro runs`: the sub-sessions that settled, newest first, and those running now (`ops.runs`, the page's too).

Text from a run (an error, a tool's name) reaches the terminal through `logview.escape`, and every string is masked
with the root's secrets on its way out, as a second guard behind the ledger's own masking.
"""

from __future__ import annotations

import json

import click

from maestro_py.bus.logview import escape
from maestro_py.cli.common import EX_USAGE, CliError, Context, complete_cadence, pass_ctx
from maestro_py.clock import SystemClock
from maestro_py.ops import runs, when
from maestro_py.redact import Redactor


@click.command("runs")
@click.option("--cadence", default=None, shell_complete=complete_cadence, help="Only this cadence's runs.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only runs settled since then: 24h, 90m, 7d, 2w, a date (2026-12-01: local midnight) or an ISO "
                   "time; running ones are always listed.")
@click.option("--failed", is_flag=True, help="Only the runs that failed (running ones are left out).")
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=None,
              help=f"How many runs, newest first (default {runs.LIMIT}; with --since, all of them).")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON (times in UTC ISO 8601).")
@pass_ctx
def runs_cmd(c: Context, cadence: str | None, since: str | None, failed: bool, count: int | None,
             as_json: bool) -> None:
    """The runs, newest first: tick, cadence, attempt, start (local time), duration, outcome, exit code, tokens,
    cost (unmeasured: unknown, with what the budget charged) and denied tool calls; a run still going comes
    first, as running. From the ledger and the bus folders; no log is read."""
    now = SystemClock().now()
    try:
        start = when.parse_since(since, now) if since is not None else None
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EX_USAGE) from None
    if count is None and start is None:
        count = runs.LIMIT
    found = runs.listing(c.layout, now, runs.Query(cadence=cadence, since=start, failed=failed, limit=count))
    masked = Redactor(c.env)
    if as_json:
        click.echo(masked.text(json.dumps(found, indent=2, ensure_ascii=False)))
        return
    if not found:
        click.echo(escape("no runs" + (f" of {cadence}" if cadence else "") + (" that failed" if failed else "")
                          + (f" since {when.local(start)}" if start else " in the ledger")))
        return
    table = [dict(zip(runs.COLUMNS, runs.COLUMNS))] + [runs.cells(run) for run in found]
    table = [{key: escape(masked.text(text)) for key, text in row.items()} for row in table]
    widths = {key: max(len(row[key]) for row in table) for key in runs.COLUMNS}
    right = {"attempt", "duration", "exit", "tokens"}
    for row in table:
        click.echo("  ".join(row[key].rjust(widths[key]) if key in right else row[key].ljust(widths[key])
                             for key in runs.COLUMNS).rstrip())
    unknown = sum(1 for run in found if run["state"] == "settled" and run["cost_usd"] is None)
    if unknown:
        click.echo(f"{unknown} run(s) with no measured cost: unknown, not $0 (the budget charged them their "
                   "reservation)")
