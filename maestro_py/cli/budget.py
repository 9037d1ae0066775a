"""`maestro budget`: per window and scope, what is allowed, spent, held by live runs and left."""

from __future__ import annotations

import json

import click

from maestro_py.cli.common import Context, budget_summary, fmt_amount, pass_ctx
from maestro_py.policy.budget import never_fits_lines


@click.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def budget(c: Context, as_json: bool) -> None:
    """Per window and scope: total, spent, reserved, remaining, runs, top cadences, reset time."""
    rows = budget_summary(c)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['scope']} {row['window']} (resets {row['resets_at']}): {row['runs']} runs")
        for unit in ("tokens", "usd"):
            click.echo(f"  {unit:<6} total {fmt_amount(row['total'][unit], unit)}"
                       f"  spent {fmt_amount(row['spent'][unit], unit)}"
                       f"  reserved {fmt_amount(row['reserved'][unit], unit)}"
                       f"  remaining {fmt_amount(row['remaining'][unit], unit)}")
        if row["top_cadences"]:
            click.echo("  top: " + ", ".join(f"{t['cadence']} ${t['usd']:.4f}" for t in row["top_cadences"]))
        for line in never_fits_lines(row["never_fits"]):
            click.echo(f"  {line}")
