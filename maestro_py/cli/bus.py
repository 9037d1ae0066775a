"""`maestro init`, `enqueue`, `stop` and `resume`: the commands that write into the agent root.

`enqueue` runs from cron, launchd and systemd timers, so this module imports only the bus (no daemon,
no doctor, no service manager).
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from maestro_py.bus.fsio import atomic_write_json
from maestro_py.bus.store import MAX_DELAY_SECONDS, Bus
from maestro_py.bus.tick import CADENCE_RE
from maestro_py.cli.common import (EX_CONFIG, EX_TEMPFAIL, EX_USAGE, ROOT_KEY, CliError, Context, complete_cadence,
                                   pass_ctx, payload_arg, payload_option)
from maestro_py.clock import SystemClock, iso
from maestro_py.config import setting
from maestro_py.errors import ConfigError, InboxFull, TickInvalid
from maestro_py.paths import Folder
from maestro_py.registry import Registry, RegistryError


@click.command()
@pass_ctx
def init(c: Context) -> None:
    """Create the agent root's layout, `.env` and a sample cadence (idempotent)."""
    lay = c.layout
    lay.root.mkdir(parents=True, exist_ok=True)
    lay.ensure()
    created: list[str] = []
    templates = Path(__file__).parent.parent / "templates"
    if not lay.env_file.exists():
        example = lay.root / ".env.example"
        text = example.read_text() if example.is_file() else (templates / "env.example").read_text()
        lay.env_file.write_text(text)
        lay.env_file.chmod(0o600)
        created.append(".env")
        claude = pin_claude(lay.env_file, c.env)
    lay.cadences_dir.mkdir(exist_ok=True)
    sample = lay.prompt_file("hello")
    if not any(lay.cadences_dir.glob("*.md")):
        sample.write_text((templates / "hello.md").read_text())
        created.append(str(sample.relative_to(lay.root)))
    for name, template in (("cadences.toml", "cadences.toml"), (".gitignore", "gitignore")):
        if not (lay.root / name).exists():
            (lay.root / name).write_text((templates / template).read_text())
            created.append(name)
    click.echo(f"initialised {lay.root}" + (f" (created {', '.join(created)})" if created else " (already set up)"))
    if ".env" in created:
        click.echo(claude)
    if created:
        root = shlex.quote(str(lay.root))
        try:  # a cadence this root has (the example agent has no `hello`)
            names = Registry.load(lay).names()
        except RegistryError:
            names = []
        first = "hello" if "hello" in names or not names else names[0]
        click.echo(f"next: put a key or subscription login in {root}/.env, then\n"
                   f"  maestro --root {root} doctor          # check the set-up\n"
                   f"  maestro --root {root} enqueue {first}   # queue a tick\n"
                   f"  maestro --root {root} run --once      # run what is queued, then exit\n"
                   f"  maestro --root {root} service install --systemd --user   # or --launchd: run it for good")


def pin_claude(env_file: Path, env: Mapping[str, str]) -> str:
    """Which `claude` the new root's daemon will run, in one line for `init` to print. When it would find none but
    this clone has the CLI `make` installed (in `.tools/claude`, not on PATH), that one is written into the new
    `.env` as CLAUDE_BIN first: the README's walk-through then works on a machine whose only `claude` is that one."""
    from dotenv import set_key

    from maestro_py.errors import ClaudeUnavailable
    from maestro_py.session.command import project_claude, resolve_claude

    try:
        return f"claude: {resolve_claude(env)}"
    except ClaudeUnavailable as exc:
        local = project_claude()
        if local is None or env.get("CLAUDE_BIN", "").strip():  # the environment's CLAUDE_BIN wins over .env's
            return f"warning: {exc}"
    with env_file.open("a", encoding="utf-8") as fh:
        fh.write("\n# Written by `maestro init`: no claude on PATH, so the CLI `make` installed in the clone.\n")
    set_key(env_file, "CLAUDE_BIN", local)  # quoted as python-dotenv reads it back
    return f"claude: none on PATH; CLAUDE_BIN={local} (the CLI `make` installed) written to {env_file}"


def records_failure(f: Callable[..., Any]) -> Callable[..., Any]:
    """`maestro enqueue` that fails (inbox full, a bad name, payload or setting, an unknown cadence, an unreadable
    `.env` …) records why in the root before it exits non-zero (`bus/trigger_failures.py`): a `trigger_failed` event,
    and, unless it runs at a terminal (where a person reads the error there and then), the file the daemon alerts
    from. Around `pass_ctx`, so a root that fails to load is recorded too, where it can be."""
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except Exception as exc:
            _record_failure(exc, str(kwargs.get("cadence") or ""), kwargs.get("source"))
            raise

    return functools.update_wrapper(run, f)


def _record_failure(exc: Exception, cadence: str, source: str | None) -> None:
    from maestro_py.bus import trigger_failures
    from maestro_py.errors import MaestroError
    from maestro_py.paths import Layout
    from maestro_py.redact import Redactor

    if isinstance(exc, click.exceptions.Exit) and exc.exit_code == 0:
        return
    if isinstance(exc, click.ClickException):
        code, reason = exc.exit_code, exc.format_message()
    elif isinstance(exc, ConfigError):
        code, reason = EX_CONFIG, str(exc)
    elif isinstance(exc, MaestroError):
        code, reason = 1, str(exc)
    else:
        code, reason = 1, f"internal error: {type(exc).__name__}: {exc}"
    try:
        top = click.get_current_context().find_root()
        c = top.obj if isinstance(top.obj, Context) else None
        layout = c.layout if c is not None else Layout.resolve(top.meta.get(ROOT_KEY))
        redactor = Redactor(c.env) if c is not None else Redactor()
    except Exception:  # noqa: BLE001 - recording must not replace the error the caller is about to see
        return
    trigger_failures.record(layout, cadence=cadence if CADENCE_RE.match(cadence) else None, reason=reason,
                            exit_code=code, source=(source or "")[:200] or None,
                            invocation=os.environ.get("INVOCATION_ID"), alert=not _at_terminal(),
                            redactor=redactor)


def _at_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@click.command()
@click.argument("cadence", shell_complete=complete_cadence)
@click.option("--source", default="cli", show_default=True, help="Who enqueued it (cron, launchd, systemd…).")
@payload_option
@click.option("--delay", type=float, default=0.0, help="Seconds before the tick may run.")
@click.option("--force", is_flag=True, help="Enqueue even if the cadence is unknown.")
@records_failure
@pass_ctx
def enqueue(c: Context, cadence: str, source: str, payload: str | None, delay: float, force: bool) -> None:
    """Drop one tick for CADENCE into the inbox and print its id."""
    if not CADENCE_RE.match(cadence):
        raise CliError(f"invalid cadence name {cadence!r} (expected {CADENCE_RE.pattern})", EX_USAGE)
    data = payload_arg(payload)
    if not 0 <= delay <= MAX_DELAY_SECONDS:  # NaN and infinity too
        raise CliError(f"--delay must be between 0 and {MAX_DELAY_SECONDS} seconds (366 days)", EX_USAGE)
    if len(source) > 200:
        raise CliError("--source is longer than 200 characters", EX_USAGE)
    # The cron path: a typo elsewhere in `.env` or `cadences.toml` must not drop a timer's tick. Only what an
    # enqueue uses is checked (the backlog ceiling); a broken registry is said, and the tick delivered: the
    # daemon runs on its previous registry (and alerts the broken edit).
    try:
        known = Registry.load(c.layout).knows(cadence)
    except RegistryError as exc:
        click.echo(f"maestro: warning: {exc} (delivered anyway: the daemon keeps its previous cadences)", err=True)
        known = True
    if not force and not known:
        raise CliError(f"unknown cadence {cadence!r}: no entry in cadences.toml and no cadences/{cadence}.md "
                       "(use --force to enqueue anyway)", EX_USAGE)
    try:
        max_inbox = setting(c.env, "MAESTRO_MAX_INBOX")
    except ConfigError as exc:
        raise CliError(str(exc), EX_CONFIG) from None
    c.layout.ensure()
    bus = Bus(c.layout, max_inbox=max_inbox)
    try:
        tick = bus.enqueue(cadence, source=source, payload=data, delay=delay)
    except InboxFull as exc:
        raise CliError(str(exc), EX_TEMPFAIL) from None
    except TickInvalid as exc:  # e.g. a payload too large to leave room for the tick's history
        raise CliError(str(exc), EX_USAGE) from None
    click.echo(tick.id)


@click.command()
@click.option("--reason", default="operator emergency stop", show_default=True)
@pass_ctx
def stop(c: Context, reason: str) -> None:
    """Emergency stop: the daemon spawns nothing and ends running sub-sessions (their ticks are requeued)."""
    c.layout.ensure()
    doc = {"reason": reason, "at": iso(SystemClock().now()), "by_pid": os.getpid()}
    atomic_write_json(c.layout.stop_file, doc, tmp_dir=c.layout.folder(Folder.TMP))
    click.echo(f"emergency stop set ({c.layout.stop_file}); `maestro resume` clears it")


@click.command()
@pass_ctx
def resume(c: Context) -> None:
    """Clear an emergency stop."""
    try:
        c.layout.stop_file.unlink()
        click.echo("emergency stop cleared")
    except FileNotFoundError:
        click.echo("no emergency stop was set")
