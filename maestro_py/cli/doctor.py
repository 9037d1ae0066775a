"""`maestro doctor`: run the setup and health checks of `ops.doctor` and print one line per finding."""

from __future__ import annotations

import json
from collections import Counter

import click

from maestro_py.cli.common import Context, pass_ctx
from maestro_py.ops import doctor


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--offline", is_flag=True, help="Skip the API request that checks the key.")
@pass_ctx
@click.pass_context
def doctor_cmd(ctx: click.Context, c: Context, as_json: bool, offline: bool) -> None:
    """Check the setup and the running daemon; exit 1 if any check fails."""
    checks = doctor.run_checks(doctor.Probe(c.layout, c.env, offline=offline))
    bad = doctor.failed(checks)
    if as_json:
        click.echo(json.dumps({"root": str(c.layout.root), "ok": not bad,
                               "checks": [check.to_json() for check in checks]}, indent=2))
    else:
        for check in checks:
            click.echo(check.line())
        counts = Counter(check.level.value for check in checks)
        click.echo(f"doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    if bad:
        ctx.exit(1)
