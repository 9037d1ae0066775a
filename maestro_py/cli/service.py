"""`maestro service print|install|sync|uninstall`: launchd agents and systemd units for this agent root.

`install` and `sync` write what differs, remove the files of ours that are no longer generated (stopping their
timers/jobs first when the manager is here) and record the options in `state/service.json`; `sync` then runs the
manager's commands itself, `install` only with `--now`. `--dest` replaces the service manager's folder (tests,
packaging, the committed examples): no command is run for it, and it cannot be combined with `--now`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from maestro_py.cli.common import EX_USAGE, CliError, Context, pass_ctx
from maestro_py.registry import Registry, RegistryError
from maestro_py.service import setup
from maestro_py.service import sync
from maestro_py.service import units as svc


def run_command(argv: Sequence[str]) -> int:
    """Run one launchctl/systemctl command, its output going straight to the terminal."""
    return subprocess.run(list(argv), check=False).returncode


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options every `service` verb shares."""
    options = [
        click.option("--launchd", is_flag=True, help="launchd agents (macOS)."),
        click.option("--systemd", is_flag=True, help="systemd units (Linux)."),
        click.option("--user", is_flag=True, help="systemd: per-user units (~/.config/systemd/user)."),
        click.option("--dest", type=click.Path(file_okay=False), default=None,
                     help="Folder for the files instead of the service manager's own."),
        click.option("--python", "python", default=None,
                     help="Interpreter written into the files (default: this one, sys.executable)."),
        click.option("--deploy-root", type=click.Path(file_okay=False), default=None,
                     help="Agent root written into the files (default: --root); nothing is recorded for sync."),
        click.option("--name", default=None,
                     help="Agent name in labels and unit names (default: the root's folder name)."),
        click.option("--watchdog-sec", type=click.IntRange(min=0), default=None,
                     help="systemd WatchdogSec= (0: none; default: 60, or more if an inline handler or guard "
                          "may run longer)."),
        click.option("--stop-timeout", type=click.IntRange(min=1), default=None,
                     help="Seconds to wait for a clean stop (default: stop grace + kill grace + 15)."),
        click.option("--run-as", default=None, help="systemd system units: User= (default: the root's owner)."),
        click.option("--serve", is_flag=True, help="Also `maestro serve` (HTTP triggers, status page) as a unit/agent."),
        click.option("--serve-host", default=None, help="With --serve: its --host (default 127.0.0.1)."),
        click.option("--serve-port", type=click.IntRange(1, 65535), default=None,
                     help="With --serve: its --port (default 8787)."),
        click.option("--claude", "claude", default=None,
                     help="The claude CLI the daemon runs, written into its unit as CLAUDE_BIN with its folder on "
                          "PATH (default: the one found now: CLAUDE_BIN, PATH, ~/.local/bin, the npm global bin…)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_harden = click.option("--harden", is_flag=True,
                       help="systemd: sandbox the units (read-only system and home but the root and the CLI's "
                            "config folder, private /tmp, no privilege gain, memory and task caps).")


def _given(opts: dict[str, Any]) -> dict[str, Any]:
    """The options typed on the command line (not their defaults)."""
    ctx = click.get_current_context()
    return {k: v for k, v in opts.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}


def _from_command_line(c: Context, opts: dict[str, Any], *, fallback: bool) -> setup.Options:
    """The options of this invocation; with `fallback` and no --launchd/--systemd, the recorded ones with any option
    given now on top."""
    given = _given(opts)
    base = setup.saved_options(c.layout) if fallback and not (opts["launchd"] or opts["systemd"]) else None
    if base is None and opts["launchd"] == opts["systemd"]:
        raise CliError("give exactly one of --launchd or --systemd" + (
            " (nothing is recorded for this root: install first)" if fallback else ""), EX_USAGE)
    if opts["serve_host"] is not None or opts["serve_port"] is not None:
        if not opts["serve"] and not (base and base.serve):
            raise CliError("--serve-host and --serve-port go with --serve", EX_USAGE)
    from maestro_py.serve.options import DEFAULT_HOST, DEFAULT_PORT

    old = base.serve if base and base.serve else (DEFAULT_HOST, DEFAULT_PORT)
    serve = (opts["serve_host"] or old[0], opts["serve_port"] or old[1])
    fields = {"user": opts["user"], "dest": opts["dest"], "python": opts["python"], "name": opts["name"],
              "watchdog_sec": opts["watchdog_sec"], "stop_timeout": opts["stop_timeout"], "run_as": opts["run_as"],
              "claude": opts["claude"], "harden": opts.get("harden", False),
              "serve": serve if opts["serve"] or (base and base.serve) else None}
    if opts["dest"] is not None:
        fields["dest"] = str(Path(opts["dest"]).expanduser().absolute())
    if base is None:
        return setup.Options(manager=svc.LAUNCHD if opts["launchd"] else svc.SYSTEMD, **fields)
    names = {"serve_host": "serve", "serve_port": "serve"}
    return setup.merged(base, **{k: fields[names.get(k, k)] for k in given if names.get(k, k) in fields})


def _target(c: Context, opts: dict[str, Any], *, fallback: bool = False, registry: Registry | None = None,
            ) -> setup.Target:
    options = _from_command_line(c, opts, fallback=fallback)
    deploy = opts["deploy_root"]
    try:
        return setup.build(c.layout, options, settings=c.settings(), registry=registry or c.registry(), env=c.env,
                           deploy_root=Path(os.path.abspath(os.path.expanduser(deploy))) if deploy else None)
    except svc.ServiceError as exc:
        raise CliError(str(exc), EX_USAGE) from None


def _tool(t: setup.Target) -> str:
    return "launchctl" if t.options.manager == svc.LAUNCHD else "systemctl"


def _manager_here(t: setup.Target) -> bool:
    """Whether launchctl/systemctl is to be run: the files are in its own folder and it is on PATH."""
    return not t.custom_dest and shutil.which(_tool(t)) is not None


def _run_all(commands: Sequence[svc.Command], *, strict: bool) -> None:
    for command in commands:
        click.echo(f"$ {command.shell()}")
        code = run_command(command.argv)
        if code and not command.may_fail:
            if strict:
                raise CliError(f"`{command.shell()}` exited {code}")
            click.echo(f"maestro: warning: `{command.shell()}` exited {code}", err=True)


def _print_commands(title: str, commands: Sequence[svc.Command]) -> None:
    if commands:
        click.echo(title)
        for command in commands:
            click.echo(f"  {command.shell()}")


def _now_allowed(t: setup.Target, now: bool) -> bool:
    """Whether to run the manager's tool; refuses --now with --dest, and without the tool on PATH."""
    if not now:
        return False
    if t.custom_dest:
        raise CliError("--now cannot be combined with --dest (the service manager does not read that folder)",
                       EX_USAGE)
    return shutil.which(_tool(t)) is not None


def _sync_files(c: Context, t: setup.Target, deployed: bool) -> sync.Plan:
    """Plan and apply: stale timers stopped (when the manager is here), files written and removed, lines printed,
    the options recorded. Returns the plan."""
    try:
        plan = sync.plan(t.options.manager, t.options.user, t.files, t.dest, t.spec.name, t.spec.root)
    except svc.ServiceError as exc:
        raise CliError(str(exc)) from None
    stops = sync.stop_stale(plan, os.getuid())
    if stops and _manager_here(t):
        _run_all(stops, strict=False)  # a timer that is not loaded is no reason to keep its file
    try:
        sync.apply(plan)
    except OSError as exc:
        system = t.options.manager == svc.SYSTEMD and not t.options.user
        raise CliError(f"cannot write {t.dest}: {exc.strerror or exc}"
                       + (" (system units need root; or use --user)" if system else "")) from None
    for verb, files in (("added", plan.added), ("changed", plan.changed), ("removed", plan.stale)):
        for f in files:
            click.echo(f"{verb} {t.dest / f.name}")
    if plan.up_to_date:
        click.echo(f"up to date: {len(plan.unchanged)} file(s) in {t.dest}")
    if stops and not _manager_here(t):
        _print_commands(f"to stop what was removed ({_tool(t)} is not run here):", stops)
    if not deployed:
        try:
            setup.save_options(c.layout, t.options)
        except OSError as exc:
            raise CliError(f"cannot record the options in {c.layout.service_file}: {exc.strerror or exc}") from None
    if t.options.manager == svc.LAUNCHD and t.spec.root == c.layout.root and c.layout.root.is_dir():
        (c.layout.root / "logs").mkdir(exist_ok=True)  # launchd opens its log files but never creates folders
    for note in t.notes:
        click.echo(note)
    return plan


@click.group()
def service() -> None:
    """launchd agents / systemd units for the daemon and every cadence with a `schedule` (and `maestro serve`)."""


@service.command("print", short_help="Show the files that install would write.")
@_options
@_harden
@pass_ctx
def service_print(c: Context, **opts: Any) -> None:
    """Write the files to stdout, each after a `# ==> PATH <==` header line."""
    t = _target(c, opts)
    for i, f in enumerate(t.files):
        click.echo(("\n" if i else "") + f"# ==> {t.dest / f.name} <==")
        click.echo(f.content, nl=False)
    for note in t.notes:
        click.echo(f"maestro: {note}", err=True)


@service.command("install", short_help="Write the files (removing stale ones of ours).")
@_options
@_harden
@click.option("--now", is_flag=True, help="Also load and start them (runs launchctl/systemctl if present).")
@pass_ctx
def service_install(c: Context, now: bool, **opts: Any) -> None:
    """Write the files into the service manager's folder (removing ours it no longer needs); print the commands that
    start them, or run them with --now."""
    t = _target(c, opts)
    run = _now_allowed(t, now)
    _sync_files(c, t, deployed=opts["deploy_root"] is not None)
    if t.custom_dest:  # the manager does not read that folder: the commands below work once the files are in its own
        link = "systemctl --user link PATH…" if t.options.manager == "systemd" else "cp PATH… ~/Library/LaunchAgents/"
        click.echo(f"note: {t.dest} is not a folder the service manager reads; put the files in its folder first "
                   f"(`{link}`), then:")
    commands = sync.activate(t.options.manager, t.options.user, t.files, t.dest, os.getuid())
    if run:
        _run_all(commands, strict=True)
        return
    _print_commands("to load and start them:", commands)
    if now:
        raise CliError(f"--now: {_tool(t)} is not on PATH; run the commands above yourself")


@service.command("sync", short_help="Make the installed files match cadences.toml.")
@_options
@_harden
@pass_ctx
def service_sync(c: Context, **opts: Any) -> None:
    """Bring the installed files in line with cadences.toml and the settings (options: those of the last install,
    with any given here on top; --launchd/--systemd: only those given here) and load what changed."""
    t = _target(c, opts, fallback=True)
    plan = _sync_files(c, t, deployed=opts["deploy_root"] is not None)
    commands, hints = sync.follow_up(plan, os.getuid())
    if _manager_here(t):
        _run_all(commands, strict=True)
    else:
        _print_commands(f"to load the changes ({_tool(t)} is not run here):", commands)
    for hint in hints:
        click.echo(hint)


@service.command("uninstall", short_help="Remove every file generated for this root.")
@_options
@click.option("--now", is_flag=True, help="Also stop and unload them (runs launchctl/systemctl if present).")
@pass_ctx
def service_uninstall(c: Context, now: bool, **opts: Any) -> None:
    """Remove every file generated for this root (also those of cadences that lost their schedule), and print (or,
    with --now, run) the commands that stop them; files without our header are left alone."""
    try:
        registry = Registry.load(c.layout)
    except RegistryError:  # a broken cadences.toml must not keep the services: ours are found by their header
        registry = Registry(c.layout, c.layout.registry_file, {}, {})
    t = _target(c, opts, fallback=True, registry=registry)
    run = _now_allowed(t, now)
    ours = sync.installed(t.options.manager, t.dest, t.spec.name, t.spec.root)
    names, wanted = {f.name for f in ours}, {f.name for f in t.files}
    stopping = [*t.files, *(f for f in ours if f.name not in wanted)]  # also units not (or no longer) generated
    before, after = sync.deactivate(t.options.manager, t.options.user, stopping, os.getuid())
    if run:
        _run_all(before, strict=False)  # a unit that is not loaded is no reason to keep its file
    try:
        removed = sync.remove(ours, t.dest)
    except OSError as exc:
        raise CliError(f"cannot remove files from {t.dest}: {exc.strerror or exc}") from None
    for path in removed:
        click.echo(f"removed {path}")
    for f in t.files:
        if f.name not in names:
            path = t.dest / f.name
            click.echo(f"left alone (not generated by maestro for this root): {path}" if path.exists()
                       else f"not installed: {path}")
    rec = setup.saved_options(c.layout)
    if rec is not None and (rec.manager, rec.user, rec.dest) == (t.options.manager, t.options.user, t.options.dest):
        setup.forget(c.layout)
    if run:
        _run_all(after, strict=True)
        return
    _print_commands("to stop and unload them:", [*before, *after])
    if now:
        raise CliError(f"--now: {_tool(t)} is not on PATH; run the commands above yourself")

