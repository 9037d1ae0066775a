"""`maestro dlq list|show|replay|purge`: dead letters, for an operator to read, retry or drop.

What a dead letter holds came from a run's output or a stranger's file: it reaches the terminal through
`logview.escape`, as in `maestro logs`, so escape sequences in it are shown, never obeyed."""

from __future__ import annotations

import json
import sys

import click

from maestro_py.bus.logview import escape
from maestro_py.bus.store import Bus
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.cli.common import EX_USAGE, CliError, Context, complete_dead_letter, pass_ctx, tick_id_arg
from maestro_py.errors import TickInvalid
from maestro_py.paths import Folder


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the dead letters as JSON.")
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
        attempts = item["attempts"] if item["attempts"] is not None else "-"  # a quarantined file has none
        click.echo(escape(f"{item['id']}  {what}  attempts={attempts}  {item['reason']}"))


@dlq.command("show", short_help="One dead letter with its whole history")
@click.argument("tick_id", shell_complete=complete_dead_letter)
@pass_ctx
def dlq_show(c: Context, tick_id: str) -> None:
    """Print one dead letter (its full history); the id may be shortened, as in git."""
    folder = c.layout.folder(Folder.DLQ)
    tick_id = tick_id_arg(c, tick_id, dead_letters=True)
    for name in (f"{tick_id}.json", tick_id):
        path = folder / name
        if "/" not in name and path.is_file() and not path.is_symlink():
            try:  # its records folded in, pretty-printed
                tick, _ = read_tick_file(path, name[:-5] if name.endswith(".json") else name)
                text = json.dumps(tick.to_json(), indent=2, ensure_ascii=False)
            except (TickInvalid, OSError):  # a quarantined file: shown as it is
                text = path.read_text(encoding="utf-8", errors="replace")
            click.echo(_lines(text))
            note = folder / f"{name}.reason.json"
            if note.is_file():
                click.echo(_lines(note.read_text(encoding="utf-8", errors="replace")))
            return
    raise CliError(f"no dead letter {tick_id!r} in {folder}")


@dlq.command("replay", short_help="Move dead letters back to the inbox, audited")
@click.argument("tick_ids", nargs=-1, shell_complete=complete_dead_letter)
@click.option("--all", "all_", is_flag=True, help="Replay every dead-lettered tick.")
@click.option("--reset-attempts", is_flag=True, help="Give the ticks a fresh retry budget.")
@pass_ctx
def dlq_replay(c: Context, tick_ids: tuple[str, ...], all_: bool, reset_attempts: bool) -> None:
    """Move ticks back to the inbox, with an audit entry in their history (quarantined files once fixed by hand).
    Ids may be shortened, as in git."""
    if bool(tick_ids) == all_:
        raise CliError("give tick ids or --all (not both)", EX_USAGE)
    bus = Bus(c.layout, max_inbox=10**9)
    ids = ([i["id"] for i in bus.dead_letters() if i["kind"] == "tick"] if all_
           else [tick_id_arg(c, given, dead_letters=True) for given in tick_ids])
    if not ids:
        click.echo("dlq holds no dead-lettered tick: nothing to replay")
        return
    errors: list[str] = []
    for tick_id in ids:
        try:
            bus.replay(tick_id, reset_attempts=reset_attempts)
            click.echo(escape(f"replayed {tick_id}"))
        except (TickInvalid, FileNotFoundError, FileExistsError) as exc:
            errors.append(escape(f"cannot replay {tick_id}: {exc}"))
    if len(ids) == 1 and errors:
        raise CliError(errors[0])  # one id: its reason is the one line
    for error in errors:
        click.echo(f"maestro: {error}", err=True)
    if errors:
        raise CliError(f"{len(errors)} of {len(ids)} could not be replayed")


@dlq.command("purge", short_help="Delete dead letters (asks first, or --yes)")
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=None, help="Only those older than DAYS.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (scripts; needed without a terminal).")
@pass_ctx
def dlq_purge(c: Context, days: float | None, yes: bool) -> None:
    """Delete dead letters (all, or those older than --older-than DAYS), after a confirmation or --yes."""
    if not yes:
        count = len(Bus(c.layout).dead_letters()) if c.layout.bus_dir.exists() else 0
        what = f"dead letters older than {days:g} days" if days is not None else f"all {count} dead letter(s)"
        if not sys.stdin.isatty():
            raise CliError(f"purge would delete {what}: pass --yes to confirm (no terminal to ask)", EX_USAGE)
        click.confirm(f"Delete {what}?", abort=True, err=True)
    removed = Bus(c.layout).purge_dead_letters(older_than_days=days)
    click.echo(f"purged {len(removed)} dead letter(s)")


def _lines(text: str) -> str:
    """A multi-line text with its line breaks kept and every other control character escaped."""
    return "\n".join(escape(line) for line in text.rstrip().split("\n"))
