"""`maestro notify test`: send one alert to every target now, to check where alerts go."""

from __future__ import annotations

import click

from maestro_py.cli.common import CliError, Context, pass_ctx
from maestro_py.clock import SystemClock, iso
from maestro_py.paths import agent_name
from maestro_py.redact import Redactor


@click.group()
def notify() -> None:
    """Alerts: check that they reach their targets (MAESTRO_NOTIFY_URLS, MAESTRO_NOTIFY_COMMAND)."""


@notify.command("test", short_help="Send one test alert to every target and wait for each")
@pass_ctx
def notify_test(c: Context) -> None:
    """Send one test alert to every target and wait for each (bounded); exit 0 only if every one took it."""
    from maestro_py.daemon.alerts import deliver
    from maestro_py.daemon.incidents import trial_alert
    from maestro_py.daemon.targets import targets_for

    settings = c.settings()
    targets = targets_for(settings.notify_urls, settings.notify_command, c.layout.root, c.env)
    if not targets:
        raise CliError("no alert target: set MAESTRO_NOTIFY_URLS (apprise URLs) or MAESTRO_NOTIFY_COMMAND in .env")
    agent = settings.agent or agent_name(c.layout.root.name)
    results = deliver(targets, trial_alert(agent), agent=agent, redactor=Redactor(c.env),
                      at=iso(SystemClock().now()))
    failed = [f"{target.label}: {error}" for target, error in results if error is not None]
    for target, error in results:
        if error is None:
            click.echo(f"ok   {target.label}")
    if failed:
        raise CliError(f"notify test: {len(failed)} of {len(results)} targets failed: " + "; ".join(failed))
