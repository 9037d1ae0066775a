"""`maestro notify test`: send one alert to every target now, to check where alerts go; `notify trigger-failed`: what
a generated systemd timer runs on failure (`OnFailure=`), recording it for the daemon to alert."""

from __future__ import annotations

import click

from maestro_py.cli.common import CliError, Context, pass_ctx
from maestro_py.clock import SystemClock, iso
from maestro_py.paths import agent_name
from maestro_py.redact import Redactor


@click.group()
def notify() -> None:
    """Alerts: check that they reach their targets (MAESTRO_NOTIFY_URLS, MAESTRO_NOTIFY_COMMAND); record a failed
    trigger for the daemon to alert."""


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


@notify.command("trigger-failed", short_help="Record a failed trigger (a systemd timer's OnFailure=)")
@click.argument("cadence")
@click.option("--unit", default=None, help="The unit that failed (default: $MONITOR_UNIT, which systemd sets).")
def notify_trigger_failed(cadence: str, unit: str | None) -> None:
    """Record that the trigger of CADENCE failed, for the daemon to alert: what the generated timer units run on
    failure (`OnFailure=`). Nothing is added when `maestro enqueue` already recorded the same failure (systemd's
    $MONITOR_INVOCATION_ID; without it, a failure of CADENCE in the last two minutes)."""
    import os

    from maestro_py.bus import trigger_failures
    from maestro_py.bus.tick import CADENCE_RE
    from maestro_py.cli.common import ROOT_KEY
    from maestro_py.envfile import load_env
    from maestro_py.errors import ConfigError
    from maestro_py.paths import Layout

    if not CADENCE_RE.match(cadence):
        raise CliError(f"invalid cadence name {cadence!r} (expected {CADENCE_RE.pattern})", 2)
    layout = Layout.resolve(click.get_current_context().find_root().meta.get(ROOT_KEY))
    layout.check_agent_root()  # not an agent root: exit 78, nothing made here
    try:
        env = load_env(layout)
    except ConfigError:  # a broken .env may be why the trigger failed: record it all the same
        env = dict(os.environ)
    unit = unit or os.environ.get("MONITOR_UNIT") or None
    invocation = os.environ.get("MONITOR_INVOCATION_ID") or None
    if trigger_failures.recorded(layout, cadence=cadence, invocation=invocation, now=SystemClock().now()):
        click.echo(f"already recorded by maestro enqueue: the trigger of {cadence}")
        return
    result, how, status = (os.environ.get(f"MONITOR_{k}", "") for k in ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS"))
    said = ", ".join(part for part in (result, f"{how} {status}".strip()) if part)
    reason = f"{unit or 'the trigger of ' + cadence} failed" + (f" ({said})" if said else "")
    code = int(status) if how == "exited" and status.isdigit() else None
    if not trigger_failures.record(layout, cadence=cadence, reason=reason, exit_code=code, source="systemd",
                                   unit=unit, invocation=invocation, redactor=Redactor(env)):
        raise CliError(f"could not record the failure in {layout.root}")
    click.echo(f"recorded: {reason}")
