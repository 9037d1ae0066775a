"""`maestro service print|install|uninstall`: launchd agents and systemd units for this agent root.

launchctl/systemctl run only with `--now` (and only if they are on PATH); otherwise the commands to
run are printed. `--dest` replaces the service manager's folder (tests, packaging, the committed
examples), and cannot be combined with `--now`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from maestro_py.cli.common import EX_USAGE, CliError, Context, pass_ctx
from maestro_py.config import load_env
from maestro_py.errors import SpawnError
from maestro_py.ops import service as svc
from maestro_py.session.command import resolve_claude


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
                     help="Agent root written into the files (default: --root)."),
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


class Target:
    """The resolved choice of manager, folder and files for one invocation."""

    def __init__(self, c: Context, opts: dict[str, Any]) -> None:
        if opts["launchd"] == opts["systemd"]:
            raise CliError("give exactly one of --launchd or --systemd", EX_USAGE)
        self.manager = svc.LAUNCHD if opts["launchd"] else svc.SYSTEMD
        self.user = bool(opts["user"])
        if self.manager == svc.LAUNCHD and self.user:
            raise CliError("--user is for --systemd (launchd agents are always per-user)", EX_USAGE)
        if opts["run_as"] and (self.manager == svc.LAUNCHD or self.user):
            raise CliError("--run-as is only for system-wide units (--systemd without --user)", EX_USAGE)
        self.claude_missing: str | None = None  # said once the files are out, so an error stays one line
        self.custom_dest = opts["dest"] is not None
        home = Path(os.path.expanduser("~"))
        self.dest = (Path(opts["dest"]).expanduser().absolute() if self.custom_dest
                     else svc.default_dest(self.manager, self.user, home, os.environ))
        self.real_root = c.layout.root
        root = Path(os.path.abspath(os.path.expanduser(opts["deploy_root"]))) if opts["deploy_root"] else c.layout.root
        settings = c.settings()
        registry = c.registry()
        watchdog = opts["watchdog_sec"]
        serve = _serve(c, opts)
        try:
            spec = svc.ServiceSpec(
                root=root,
                python=_interpreter(opts["python"]),
                name=opts["name"] if opts["name"] is not None else svc.agent_name(root.name),
                schedules=svc.schedules(registry),
                zones=svc.zones(registry),
                stop_timeout=opts["stop_timeout"] or svc.stop_timeout(settings.stop_grace, settings.kill_grace),
                watchdog_sec=svc.watchdog_sec(registry, settings.spawn_timeout) if watchdog is None else watchdog,
                user=self.user,
                run_as=None if self.manager == svc.LAUNCHD or self.user else opts["run_as"] or _owner(c.layout.root),
                claude=self._claude(c, opts["claude"]),
                # A CLAUDE_BIN in the unit would silently win over one in .env: there, .env stays in charge.
                claude_bin=not load_env(c.layout, base={}).get("CLAUDE_BIN"),
                serve=serve,
            )
            self.spec = spec
            self.files = svc.generate(spec, self.manager)
        except svc.ServiceError as exc:
            raise CliError(str(exc), EX_USAGE) from None

    def _claude(self, c: Context, given: str | None) -> str | None:
        """The claude the service will run: `--claude`, else the one the daemon would find now (None if there is
        none: the daemon then holds every spawn with a `claude_missing` event until it appears)."""
        if given is not None:
            return os.path.abspath(os.path.expanduser(given))
        try:
            return os.path.abspath(resolve_claude(c.env))
        except SpawnError as exc:
            self.claude_missing = (f"warning: {exc}; the service will not find it either (install it and run this "
                                   "again, or pass --claude PATH)")
            return None

    @property
    def tool(self) -> str:
        """launchctl or systemctl."""
        return "launchctl" if self.manager == svc.LAUNCHD else "systemctl"


def _serve(c: Context, opts: dict[str, Any]) -> tuple[str, int] | None:
    """(host, port) of the `maestro serve` unit, or None; off loopback only when the root sets a token."""
    if not opts["serve"]:
        if opts["serve_host"] is not None or opts["serve_port"] is not None:
            raise CliError("--serve-host and --serve-port go with --serve", EX_USAGE)
        return None
    from maestro_py.serve.options import DEFAULT_HOST, DEFAULT_PORT, is_loopback  # no web stack: just the rule

    host = opts["serve_host"] or DEFAULT_HOST
    if not is_loopback(host) and not c.env.get("MAESTRO_SERVE_TOKEN", "").strip():
        raise CliError(f"--serve-host {host} is not a loopback address: set MAESTRO_SERVE_TOKEN in the root's .env "
                       "first (the server would refuse to start without it)", EX_USAGE)
    return host, opts["serve_port"] or DEFAULT_PORT


def _interpreter(given: str | None) -> str:
    if given is None:
        return sys.executable
    if os.sep not in given:
        raise CliError(f"--python needs a path to the interpreter, got {given!r}", EX_USAGE)
    return os.path.abspath(os.path.expanduser(given))  # abspath, not resolve: a venv's python is a symlink


def _owner(root: Path) -> str:
    """Who system-wide units run as: the root's owner (not root because `sudo` installed them)."""
    try:
        uid = root.stat().st_uid
    except OSError:
        uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _run_all(commands: Sequence[svc.Command], *, strict: bool) -> None:
    for command in commands:
        click.echo(f"$ {command.shell()}")
        code = run_command(command.argv)
        if code and not command.may_fail:
            if strict:
                raise CliError(f"`{command.shell()}` exited {code}")
            click.echo(f"maestro: warning: `{command.shell()}` exited {code}", err=True)


def _now_allowed(t: Target, now: bool) -> bool:
    """Whether to run the manager's tool; refuses --now with --dest, and without the tool on PATH."""
    if not now:
        return False
    if t.custom_dest:
        raise CliError("--now cannot be combined with --dest (the service manager does not read that folder)",
                       EX_USAGE)
    return shutil.which(t.tool) is not None


@click.group()
def service() -> None:
    """launchd agents / systemd units for the daemon and every cadence with a `schedule` (and `maestro serve`)."""


@service.command("print")
@_options
@pass_ctx
def service_print(c: Context, **opts: Any) -> None:
    """Write the files to stdout, each after a `# ==> PATH <==` header line."""
    t = Target(c, opts)
    for i, f in enumerate(t.files):
        click.echo(("\n" if i else "") + f"# ==> {t.dest / f.name} <==")
        click.echo(f.content, nl=False)
    if t.claude_missing:
        click.echo(f"maestro: {t.claude_missing}", err=True)


@service.command("install")
@_options
@click.option("--now", is_flag=True, help="Also load and start them (runs launchctl/systemctl if present).")
@pass_ctx
def service_install(c: Context, now: bool, **opts: Any) -> None:
    """Write the files into the service manager's folder and print (or, with --now, run) the commands to start them."""
    t = Target(c, opts)
    run = _now_allowed(t, now)
    try:
        written = svc.install(t.files, t.dest)
    except OSError as exc:
        hint = " (system units need root; or use --user)" if t.manager == svc.SYSTEMD and not t.user else ""
        raise CliError(f"cannot write {t.dest}: {exc.strerror or exc}{hint}") from None
    for path in written:
        click.echo(f"wrote {path}")
    if t.claude_missing:
        click.echo(t.claude_missing)
    if t.manager == svc.LAUNCHD and t.spec.root == t.real_root and t.real_root.is_dir():
        (t.real_root / "logs").mkdir(exist_ok=True)  # launchd opens its log files but never creates folders
    commands = svc.activate(t.manager, t.user, t.files, t.dest, os.getuid())
    if run:
        _run_all(commands, strict=True)
        return
    click.echo("to load and start them:")
    for command in commands:
        click.echo(f"  {command.shell()}")
    if now:
        raise CliError(f"--now: {t.tool} is not on PATH; run the commands above yourself")


@service.command("uninstall")
@_options
@click.option("--now", is_flag=True, help="Also stop and unload them (runs launchctl/systemctl if present).")
@pass_ctx
def service_uninstall(c: Context, now: bool, **opts: Any) -> None:
    """Remove exactly the files `install` would write, and print (or, with --now, run) the commands to stop them."""
    t = Target(c, opts)
    run = _now_allowed(t, now)
    before, after = svc.deactivate(t.manager, t.user, t.files, os.getuid())
    if run:
        _run_all(before, strict=False)  # a unit that is not loaded is no reason to keep its file
    try:
        removed, absent = svc.uninstall(t.files, t.dest)
    except OSError as exc:
        raise CliError(f"cannot remove files from {t.dest}: {exc.strerror or exc}") from None
    for path in removed:
        click.echo(f"removed {path}")
    for path in absent:
        click.echo(f"not installed: {path}")
    if run:
        _run_all(after, strict=True)
        return
    click.echo("to stop and unload them:")
    for command in [*before, *after]:
        click.echo(f"  {command.shell()}")
    if now:
        raise CliError(f"--now: {t.tool} is not on PATH; run the commands above yourself")
