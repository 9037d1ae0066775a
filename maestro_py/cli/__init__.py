"""The `maestro` command: the root group and `main()`; each subcommand lives in its own module.

A subcommand's module is imported only when that subcommand runs (click's lazy-group pattern), so a
cron-fired `maestro enqueue` does not import the daemon, the doctor or the service manager. `maestro --help`
lists each command with its one-line summary from `SUMMARIES`, importing none of them; `maestro COMMAND -h`
shows the command's own help.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

from maestro_py.cli.common import ROOT_KEY, MaestroGroup

# Command name -> "module:attribute". One entry per subcommand; `maestro --help` lists them sorted.
COMMANDS: Mapping[str, str] = {
    "init": "maestro_py.cli.bus:init",
    "enqueue": "maestro_py.cli.bus:enqueue",
    "stop": "maestro_py.cli.bus:stop",
    "resume": "maestro_py.cli.bus:resume",
    "run": "maestro_py.cli.daemon:run",
    "status": "maestro_py.cli.daemon:status",
    "circuit": "maestro_py.cli.circuit:circuit",
    "dlq": "maestro_py.cli.dlq:dlq",
    # operator commands on ticks and cadences (issue 17)
    "inbox": "maestro_py.cli.inbox:inbox",
    "tick": "maestro_py.cli.tick:tick",
    "cost": "maestro_py.cli.cost:cost_cmd",
    "runs": "maestro_py.cli.runs:runs_cmd",
    "cadences": "maestro_py.cli.cadences:cadences_cmd",
    "dry-run": "maestro_py.cli.dryrun:dry_run",
    "run-now": "maestro_py.cli.runnow:run_now",
    "budget": "maestro_py.cli.budget:budget",
    "governor": "maestro_py.cli.governor:governor",
    "doctor": "maestro_py.cli.doctor:doctor_cmd",
    "logs": "maestro_py.cli.logs:logs_cmd",
    "prune": "maestro_py.cli.logs:prune_cmd",
    "service": "maestro_py.cli.service:service",
    "notify": "maestro_py.cli.notify:notify",
    "serve": "maestro_py.cli.serve:serve",
}

# Command name -> what `maestro --help` says of it: one line, short enough for 80 columns (a test checks each
# command has one; `maestro COMMAND -h` has the whole story).
SUMMARIES: Mapping[str, str] = {
    "init": "Create an agent root: layout, .env, cadences.toml, a prompt",
    "enqueue": "Queue one tick for CADENCE and print its id",
    "stop": "Emergency stop: end running sub-sessions, start none",
    "resume": "Clear an emergency stop",
    "run": "Run the daemon (--once: what is runnable now, then exit)",
    "status": "Is the daemon alive? Queues, live runs, halts, budgets",
    "circuit": "List, reset or open the circuit breakers and the halts",
    "dlq": "List, show, replay or purge dead letters",
    "inbox": "List the queued ticks, oldest first, and why they wait",
    "tick": "Show, log, cancel, kill or run now one tick (ids may be shortened)",
    "cost": "What the runs cost, by cadence, model or day, with totals",
    "runs": "The runs, newest first: outcome, duration, tokens, cost, denials",
    "cadences": "Each cadence: schedule, next fire, last outcome, cost, holds",
    "dry-run": "Show the exact run CADENCE would get now, and any gate holding it",
    "run-now": "Queue one tick for CADENCE and run it now (--wait follows it)",
    "budget": "Budgets per window and scope: spent, reserved, left, reset",
    "governor": "Show or set the limits in the fleet governor store",
    "doctor": "Check the setup and the daemon; exit 1 on any failure",
    "logs": "Show the event log (filters, --since, --follow, --json)",
    "prune": "Remove old done ticks and logs; rotate old event logs",
    "service": "launchd/systemd files for the daemon and scheduled cadences",
    "notify": "Test the alert targets; record a failed trigger (systemd)",
    "serve": "Serve HTTP triggers, tick status, /healthz and /metrics",
}


class LazyGroup(MaestroGroup):
    """A group whose subcommands are named by "module:attribute" and imported on first use."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand's name, without importing any of them."""
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `--help`, each with its summary, importing no command's module."""
        rows = []
        for name in self.list_commands(ctx):
            summary = SUMMARIES.get(name)
            if summary is None:  # not a lazy one (`help`): its own short help
                command = self.get_command(ctx, name)
                summary = command.get_short_help_str(limit=formatter.width) if command is not None else ""
            rows.append((name, summary))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The subcommand, importing its module now if it is a lazy one."""
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, invoke_without_command=True, no_args_is_help=False,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Agent root (default: $MAESTRO_AGENT_ROOT, else the current directory).")
@click.version_option(package_name="maestro_py", prog_name="maestro")
@click.pass_context
def cli(ctx: click.Context, root: str | None) -> None:
    """maestro: run scheduled AI work (cadences) safely from a filesystem tick bus."""
    if ctx.invoked_subcommand is None:  # bare `maestro`: the help, on stdout, exit 0
        click.echo(ctx.get_help())
        return
    # The root is read and checked when the command runs (`pass_ctx`), after its own options are parsed, so that
    # `maestro status -h` works in any folder.
    ctx.meta[ROOT_KEY] = root


@cli.command("help", short_help="Show the help of maestro or of a command")
@click.argument("command", nargs=-1)
@click.pass_context
def help_cmd(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Show the help of maestro or of COMMAND (`maestro help dlq purge`)."""
    group: click.Command = cli
    parent = ctx.parent or ctx
    for name in command:
        sub = group.get_command(parent, name) if isinstance(group, click.Group) else None
        if sub is None:
            raise click.UsageError(f"no such command: {' '.join(command)}")
        parent = click.Context(sub, info_name=name, parent=parent)
        group = sub
    click.echo(parent.get_help())


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="maestro")
