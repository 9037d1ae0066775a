"""The `maestro` command: a thin click layer over the library; domain errors become one-line messages."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from maestro_py.policy.breaker import AUTH_HALT, Breakers, CircuitFile
from maestro_py.bus.store import Bus
from maestro_py.clock import SystemClock, iso
from maestro_py.config import Settings, load_env
from maestro_py.errors import AlreadyRunning, ConfigError, InboxFull, MaestroError, TickInvalid
from maestro_py.bus.fsio import atomic_write_json
from maestro_py.paths import Folder, Layout
from maestro_py.registry import Registry, RegistryError
from maestro_py.daemon.status import liveness, read_status
from maestro_py.bus.tick import CADENCE_RE

EX_USAGE = 2
EX_TEMPFAIL = 75


class CliError(click.ClickException):
    """A failure reported as one line with a chosen exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MaestroGroup(click.Group):
    """Prints every error as one line (`maestro: …`) instead of click's usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name or "maestro", complete_var, standalone_mode=False, **extra)
        except click.exceptions.UsageError as exc:
            click.echo(f"maestro: {exc.format_message()}", err=True)
            sys.exit(EX_USAGE)
        except click.ClickException as exc:
            click.echo(f"maestro: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("maestro: aborted", err=True)
            sys.exit(130)
        except MaestroError as exc:
            click.echo(f"maestro: {exc}", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


class Context:
    """What every command needs: the layout and the merged environment."""

    def __init__(self, root: str | None) -> None:
        self.layout = Layout.resolve(root)
        self.env = load_env(self.layout)

    def settings(self) -> Settings:
        try:
            return Settings.from_env(self.env)
        except ConfigError as exc:
            raise CliError(str(exc), EX_USAGE) from None

    def registry(self) -> Registry:
        try:
            return Registry.load(self.layout)
        except RegistryError as exc:
            raise CliError(str(exc), EX_USAGE) from None


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=MaestroGroup)
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Agent root (default: $MAESTRO_AGENT_ROOT, else the current directory).")
@click.version_option(package_name="maestro_py", prog_name="maestro")
@click.pass_context
def cli(ctx: click.Context, root: str | None) -> None:
    """maestro: run scheduled AI work (cadences) safely from a filesystem tick bus."""
    ctx.obj = Context(root)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="maestro")


# -- init -------------------------------------------------------------------

@cli.command()
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
    lay.cadences_dir.mkdir(exist_ok=True)
    sample = lay.prompt_file("hello")
    if not any(lay.cadences_dir.glob("*.md")):
        sample.write_text((templates / "hello.md").read_text())
        created.append(str(sample.relative_to(lay.root)))
    click.echo(f"initialised {lay.root}" + (f" (created {', '.join(created)})" if created else " (already set up)"))


# -- enqueue ----------------------------------------------------------------

@cli.command()
@click.argument("cadence")
@click.option("--source", default="cli", show_default=True, help="Who enqueued it (cron, launchd, systemd…).")
@click.option("--payload", default=None, help="A JSON object handed to the run.")
@click.option("--delay", type=float, default=0.0, help="Seconds before the tick may run.")
@click.option("--force", is_flag=True, help="Enqueue even if the cadence is unknown.")
@pass_ctx
def enqueue(c: Context, cadence: str, source: str, payload: str | None, delay: float, force: bool) -> None:
    """Drop one tick for CADENCE into the inbox and print its id."""
    if not CADENCE_RE.match(cadence):
        raise CliError(f"invalid cadence name {cadence!r} (expected {CADENCE_RE.pattern})", EX_USAGE)
    data: dict[str, Any] = {}
    if payload is not None:
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise CliError(f"--payload is not valid JSON: {exc}", EX_USAGE) from None
        if not isinstance(data, dict):
            raise CliError("--payload must be a JSON object", EX_USAGE)
    if delay < 0 or delay != delay:
        raise CliError("--delay must be >= 0 seconds", EX_USAGE)
    if len(source) > 200:
        raise CliError("--source is longer than 200 characters", EX_USAGE)
    if not force and not c.registry().knows(cadence):
        raise CliError(f"unknown cadence {cadence!r}: no entry in cadences.toml and no cadences/{cadence}.md "
                       "(use --force to enqueue anyway)", EX_USAGE)
    settings = c.settings()
    c.layout.ensure()
    bus = Bus(c.layout, max_inbox=settings.max_inbox)
    try:
        tick = bus.enqueue(cadence, source=source, payload=data, delay=delay)
    except InboxFull as exc:
        raise CliError(str(exc), EX_TEMPFAIL) from None
    click.echo(tick.id)


# -- run --------------------------------------------------------------------

@cli.command()
@click.option("--once", is_flag=True, help="Process everything runnable now, wait for its sub-sessions, exit.")
@click.option("--no-watch", is_flag=True, help="Poll only (no filesystem notifications).")
@pass_ctx
def run(c: Context, once: bool, no_watch: bool) -> None:
    """Run the daemon: claim ticks and run them until stopped (SIGTERM drains, a second ends at once)."""
    import logging

    from maestro_py.daemon.loop import Daemon

    # The daemon's own stderr (launchd's StandardErrorPath, journald) says what the event log cannot
    # when the disk under it is full or read-only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s maestro: %(message)s", stream=sys.stderr)
    settings = c.settings()
    c.registry()  # report an invalid registry before taking the lock
    c.layout.ensure()
    try:
        daemon = Daemon(c.layout, settings, c.env, watch=not no_watch)
        code = daemon.run(once=once)
    except AlreadyRunning as exc:
        raise CliError(str(exc), 1) from None
    except RegistryError as exc:
        raise CliError(str(exc), EX_USAGE) from None
    if code:
        raise CliError("daemon exited with an error", code)


# -- stop / resume ------------------------------------------------------------

@cli.command()
@click.option("--reason", default="operator emergency stop", show_default=True)
@pass_ctx
def stop(c: Context, reason: str) -> None:
    """Emergency stop: the daemon spawns nothing and ends running sub-sessions (their ticks are requeued)."""
    c.layout.ensure()
    doc = {"reason": reason, "at": iso(SystemClock().now()), "by_pid": os.getpid()}
    atomic_write_json(c.layout.stop_file, doc, tmp_dir=c.layout.folder(Folder.TMP))
    click.echo(f"emergency stop set ({c.layout.stop_file}); `maestro resume` clears it")


@cli.command()
@pass_ctx
def resume(c: Context) -> None:
    """Clear an emergency stop."""
    try:
        c.layout.stop_file.unlink()
        click.echo("emergency stop cleared")
    except FileNotFoundError:
        click.echo("no emergency stop was set")


# -- status -----------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(c: Context, as_json: bool) -> None:
    """Show whether the daemon is alive, queue depths, live sub-sessions and counters."""
    doc = read_status(c.layout)
    now = SystemClock().now()
    live = liveness(c.layout, doc, now)
    depths = Bus(c.layout).depths() if c.layout.bus_dir.exists() else {f.value: 0 for f in Folder}
    breakers, _ = _circuits(c)
    out = {
        "root": str(c.layout.root),
        "daemon": live,
        "queues": depths,
        "emergency_stop": c.layout.stop_file.exists(),
        "auth_halt": AUTH_HALT in breakers.open_circuits(),
        "circuits": {n: circ.to_json() for n, circ in sorted(breakers.open_circuits().items())},
        "budget": budget_summary(c),
        "status": doc,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    state = "alive" if live["alive"] else "not running"
    age = f", heartbeat {live['heartbeat_age_s']}s ago" if live["heartbeat_age_s"] is not None else ""
    click.echo(f"daemon: {state}" + (f" (pid {live['pid']}{age})" if live["pid"] else ""))
    click.echo("queues: " + "  ".join(f"{k}={v}" for k, v in depths.items() if k != "tmp"))
    if out["emergency_stop"]:
        click.echo(f"EMERGENCY STOP is set ({c.layout.stop_file}); `maestro resume` clears it")
    if out["auth_halt"]:
        halt = out["circuits"][AUTH_HALT]
        click.echo(f"AUTH HALT: no sub-session will spawn ({halt['last_error']}); fix the key in .env or set "
                   "MAESTRO_PREFER_SUBSCRIPTION_AUTH=1, or `maestro circuit reset --all`")
    for name, circ in out["circuits"].items():
        if name != AUTH_HALT:
            click.echo(f"circuit {name}: {circ['state']} until {circ['open_until'] or 'reset'} ({circ['last_error']})")
    if doc:
        for run_ in doc.get("live_subsessions", []):
            click.echo(f"running: {run_['cadence']} tick {run_['tick']} pid {run_['pid']} since {run_['started']}")
        counters = {k: v for k, v in (doc.get("counters") or {}).items() if v}
        if counters:
            click.echo("counters: " + "  ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    for row in out["budget"]:
        spent, total, left = row["spent"], row["total"], row["remaining"]
        click.echo(f"budget {row['scope']} {row['window']}: spent {spent['tokens']:,} tokens / ${spent['usd']:.4f}"
                   f" of {_fmt(total['tokens'], 'tokens')} / {_fmt(total['usd'], 'usd')}; remaining "
                   f"{_fmt(left['tokens'], 'tokens')} / {_fmt(left['usd'], 'usd')}; resets {row['resets_at']}")
    click.echo(f"ledger: {c.layout.ledger_file}")
    click.echo(f"events: {c.layout.events_dir}/bus-YYYY-MM-DD.jsonl   per-run logs: {c.layout.subsessions_dir}")


# -- circuit ------------------------------------------------------------------

def _circuits(c: Context) -> tuple[Breakers, CircuitFile]:
    from maestro_py.ops import views

    try:
        return views.load_breakers(c.layout)
    except views.CircuitFileInvalid as exc:
        raise CliError(str(exc)) from None


@cli.group()
def circuit() -> None:
    """Inspect and operate the per-cadence circuit breakers and the auth halt."""


@circuit.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def circuit_list(c: Context, as_json: bool) -> None:
    """Open and half-open circuits (the auth halt shows as `_auth`)."""
    breakers, _ = _circuits(c)
    open_ = {name: circ.to_json() for name, circ in sorted(breakers.open_circuits().items())}
    if as_json:
        click.echo(json.dumps(open_, indent=2))
        return
    if not open_:
        click.echo("no open circuits")
    for name, doc in open_.items():
        label = "AUTH HALT (all spawning stopped)" if name == AUTH_HALT else name
        until = doc["open_until"] or "until reset" + (" or credentials change" if name == AUTH_HALT else "")
        click.echo(f"{label}: {doc['state']} until {until}; failures={doc['failures']}; last error: {doc['last_error']}")


@circuit.command("reset")
@click.argument("cadence", required=False)
@click.option("--all", "all_", is_flag=True, help="Close every circuit and lift the auth halt.")
@pass_ctx
def circuit_reset(c: Context, cadence: str | None, all_: bool) -> None:
    """Close CADENCE's circuit (or all of them with --all)."""
    if bool(cadence) == all_:
        raise CliError("give a CADENCE or --all (not both)", EX_USAGE)
    breakers, file = _circuits(c)
    closed = breakers.reset(None if all_ else cadence)
    c.layout.ensure()
    file.save(breakers.to_doc(SystemClock().now()))
    click.echo(f"closed: {', '.join(closed)}" if closed else "nothing was open")


@circuit.command("open")
@click.argument("cadence")
@click.option("--for", "seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to stay open (default: until reset).")
@pass_ctx
def circuit_open(c: Context, cadence: str, seconds: float | None) -> None:
    """Open CADENCE's circuit by hand: its ticks wait in the inbox without burning attempts."""
    if not CADENCE_RE.match(cadence):
        raise CliError(f"invalid cadence name {cadence!r}", EX_USAGE)
    breakers, file = _circuits(c)
    circ = breakers.open_manually(cadence, SystemClock().now(), seconds)
    c.layout.ensure()
    file.save(breakers.to_doc(SystemClock().now()))
    until = iso(circ.open_until) if circ.open_until else "reset"
    click.echo(f"{cadence}: open until {until}")


# -- dlq ----------------------------------------------------------------------

@cli.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def dlq_list(c: Context, as_json: bool) -> None:
    """Every dead letter with its reason."""
    items = Bus(c.layout).dead_letters() if c.layout.bus_dir.exists() else []
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("dlq is empty")
    for item in items:
        what = item["cadence"] or item["kind"]
        click.echo(f"{item['id']}  {what}  attempts={item['attempts']}  {item['reason']}")


@dlq.command("show")
@click.argument("tick_id")
@pass_ctx
def dlq_show(c: Context, tick_id: str) -> None:
    """Print one dead letter (its full history)."""
    folder = c.layout.folder(Folder.DLQ)
    for name in (f"{tick_id}.json", tick_id):
        path = folder / name
        if "/" not in name and path.is_file() and not path.is_symlink():
            text = path.read_text(encoding="utf-8", errors="replace")
            try:
                text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)  # tick files are one line
            except ValueError:
                pass  # a quarantined file: shown as it is
            click.echo(text.rstrip())
            note = folder / f"{name}.reason.json"
            if note.is_file():
                click.echo(note.read_text(encoding="utf-8").rstrip())
            return
    raise CliError(f"no dead letter {tick_id!r} in {folder}")


@dlq.command("replay")
@click.argument("tick_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead-lettered tick.")
@click.option("--reset-attempts", is_flag=True, help="Give the ticks a fresh retry budget.")
@pass_ctx
def dlq_replay(c: Context, tick_ids: tuple[str, ...], all_: bool, reset_attempts: bool) -> None:
    """Move ticks back to the inbox, with an audit entry in their history."""
    if bool(tick_ids) == all_:
        raise CliError("give tick ids or --all (not both)", EX_USAGE)
    bus = Bus(c.layout, max_inbox=10**9)
    ids = [i["id"] for i in bus.dead_letters() if i["kind"] == "tick"] if all_ else list(tick_ids)
    failed = 0
    for tick_id in ids:
        try:
            bus.replay(tick_id, reset_attempts=reset_attempts)
            click.echo(f"replayed {tick_id}")
        except (TickInvalid, FileNotFoundError, FileExistsError) as exc:
            failed += 1
            click.echo(f"maestro: cannot replay {tick_id}: {exc}", err=True)
    if failed:
        raise CliError(f"{failed} of {len(ids)} could not be replayed")


@dlq.command("purge")
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=None, help="Only those older than DAYS.")
@pass_ctx
def dlq_purge(c: Context, days: float | None) -> None:
    """Delete dead letters (all, or those older than --older-than DAYS)."""
    removed = Bus(c.layout).purge_dead_letters(older_than_days=days)
    click.echo(f"purged {len(removed)} dead letter(s)")


# Operations commands (doctor, service, logs, prune) live in their own modules and register on `cli`.
from maestro_py.cli import service, doctor  # noqa: E402,F401


# -- budget -------------------------------------------------------------------

def budget_summary(c: Context) -> list[dict[str, Any]]:
    """The budget as the daemon sees it: limits from settings and registry, spent from the ledger,
    reservations from the running daemon's status file."""
    from maestro_py.ops import views

    return views.budget_rows(c.layout, c.settings(), c.registry(), SystemClock().now())


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "unlimited"
    return f"${value:.4f}" if unit == "usd" else f"{value:,}"


@cli.command()
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
            click.echo(f"  {unit:<6} total {_fmt(row['total'][unit], unit)}  spent {_fmt(row['spent'][unit], unit)}"
                       f"  reserved {_fmt(row['reserved'][unit], unit)}  remaining {_fmt(row['remaining'][unit], unit)}")
        if row["top_cadences"]:
            click.echo("  top: " + ", ".join(f"{t['cadence']} ${t['usd']:.4f}" for t in row["top_cadences"]))
