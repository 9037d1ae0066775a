"""`maestro cost`: what the runs cost, from the ledger, by cadence, model or day, with totals."""

from __future__ import annotations

import json
from typing import Any

import click

from maestro_py.bus.logview import escape
from maestro_py.cli.common import EX_USAGE, CliError, Context, pass_ctx
from maestro_py.clock import SystemClock
from maestro_py.ops import cost, when


@click.command("cost")
@click.option("--by", type=click.Choice(cost.GROUPINGS), default="cadence", show_default=True,
              help="Group the runs by cadence, model or local day.")
@click.option("--since", default=None, metavar="WHEN",
              help="7d, 24h, 90m, 2w, a date (2026-11-01: local midnight) or an ISO time; default: the whole ledger.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups and the total as JSON.")
@pass_ctx
def cost_cmd(c: Context, by: str, since: str | None, as_json: bool) -> None:
    """What the runs cost, from the ledger, by cadence, model or day, with totals (unmeasured runs apart)."""
    now = SystemClock().now()
    try:
        start = when.parse_since(since, now) if since is not None else None
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EX_USAGE) from None
    doc = cost.report(cost.rows(c.layout, start, now), by, since=start, now=now)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    total = doc["total"]
    span = f"since {when.local(start)}" if start else "in the whole ledger"
    click.echo(f"cost by {by} {span}: {total['runs']} run(s)")
    if not total["runs"]:
        return
    click.echo(f"{by:<28} {'runs':>6} {'cost':>12} {'tokens':>14}  unmeasured")
    for group in doc["groups"]:
        click.echo(escape(_line(group["key"], group)))
    click.echo(_line("total", total))
    if total["cost_unknown_runs"] or total["tokens_unknown_runs"]:
        click.echo(f"{total['cost_unknown_runs']} run(s) with no measured cost are not counted as $0: their cost is "
                   f"unknown (the budget charged them ${total['charged_unknown_usd']:.4f}, their reservations)")
    if by == "model":
        click.echo("a run that used several models counts once per model")


def _line(key: str, fig: dict[str, Any]) -> str:
    usd = _known(fig["cost_usd"], fig["cost_unknown_runs"], fig["runs"], f"${fig['cost_usd']:.4f}")
    tokens = _known(fig["tokens"], fig["tokens_unknown_runs"], fig["runs"], f"{fig['tokens']:,}")
    return f"{key:<28} {fig['runs']:>6} {usd:>12} {tokens:>14}  {_unknown(fig)}"


def _known(value: float, unknown: int, runs: int, shown: str) -> str:
    """The measured sum; `+?` when some runs are unmeasured, `unknown` when none was measured (never a bare 0)."""
    if unknown and unknown == runs:
        return "unknown"
    return f"{shown}+?" if unknown else shown


def _unknown(fig: dict[str, Any]) -> str:
    """How many of the group's runs were not measured, and what the budget charged them."""
    cost_n, tokens_n = fig["cost_unknown_runs"], fig["tokens_unknown_runs"]
    if not cost_n and not tokens_n:
        return "-"
    charged = f" (charged ${fig['charged_unknown_usd']:.4f})" if cost_n else ""
    if cost_n == tokens_n:
        return f"{cost_n} run(s){charged}"
    return f"cost of {cost_n} run(s){charged}, tokens of {tokens_n} run(s)"
