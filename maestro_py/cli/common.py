"""What every `maestro` command shares: one-line errors with fixed exit codes, the root's layout and
environment, and the operator read-models turned into CLI errors.

Only what `maestro enqueue` needs is imported at the top: a cron-fired enqueue pays for nothing else.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from maestro_py.config import Settings
from maestro_py.envfile import load_env
from maestro_py.errors import ConfigError, MaestroError
from maestro_py.paths import Layout
from maestro_py.registry import Registry, RegistryError

if TYPE_CHECKING:
    from maestro_py.policy.breaker import Breakers, Circuit, CircuitFile

EX_USAGE = 2        # a bad argument on the command line
EX_TEMPFAIL = 75
EX_CONFIG = 78      # sysexits EX_CONFIG: a bad setting, .env or cadences.toml (services do not restart on it)


class CliError(click.ClickException):
    """A failure reported as one line with a chosen exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MaestroGroup(click.Group):
    """Prints every error as one line (`maestro: …`) instead of click's usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command; any error ends the process with one line on stderr and its exit code."""
        args = root_first(sys.argv[1:] if args is None else list(args))
        try:
            rv = super().main(args, prog_name or "maestro", complete_var, standalone_mode=False, **extra)
        except click.exceptions.UsageError as exc:
            click.echo(f"maestro: {exc.format_message()}", err=True)
            sys.exit(EX_USAGE)
        except click.ClickException as exc:
            click.echo(f"maestro: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except ConfigError as exc:  # raised before a command could wrap it (a bad .env read for --root)
            click.echo(f"maestro: {exc}", err=True)
            sys.exit(EX_CONFIG)
        except click.exceptions.Abort:
            click.echo("maestro: aborted", err=True)
            sys.exit(130)
        except MaestroError as exc:
            click.echo(f"maestro: {exc}", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def root_first(args: list[str]) -> list[str]:
    """`--root DIR` (or `--root=DIR`) anywhere before a `--` moves to the front: `maestro status --root X` works."""
    out: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        if arg == "--root" and i + 1 < len(args):
            moved = [arg, args[i + 1]]
            i += 2
            continue
        if arg.startswith("--root="):
            moved = [arg]
        else:
            out.append(arg)
        i += 1
    return moved + out


class Context:
    """What every command needs: the layout and the merged environment."""

    def __init__(self, root: str | None) -> None:
        self.layout = Layout.resolve(root)
        self.env = load_env(self.layout)

    def settings(self) -> Settings:
        """The settings from the environment; an invalid one is a configuration error (exit 78)."""
        try:
            return Settings.from_env(self.env)
        except ConfigError as exc:
            raise CliError(str(exc), EX_CONFIG) from None

    def registry(self) -> Registry:
        """The cadence registry; an invalid one is a configuration error (exit 78)."""
        try:
            return Registry.load(self.layout)
        except RegistryError as exc:
            raise CliError(str(exc), EX_CONFIG) from None


ROOT_KEY = "maestro.root"  # ctx.meta: the --root the group was given


def pass_ctx(f: Callable[..., Any]) -> Callable[..., Any]:
    """Hand the command its `Context`, made when the command runs: after click has handled its options, so `-h`
    needs no agent root. The root is checked then (not an agent root: exit 78), except by `init`, which makes it."""
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        top = ctx.find_root()
        if not isinstance(top.obj, Context):
            top.obj = Context(top.meta.get(ROOT_KEY))
            if top.invoked_subcommand != "init":
                top.obj.layout.check_agent_root()
        return ctx.invoke(f, top.obj, *args, **kwargs)

    return functools.update_wrapper(run, f)


PAYLOAD_HELP = ("A JSON object handed to the run: the JSON itself, `-` to read it from standard input, or @FILE "
                "to read it from a file.")
payload_option = click.option("--payload", default=None, metavar="JSON|-|@FILE", help=PAYLOAD_HELP)


def payload_arg(text: str | None) -> dict[str, Any]:
    """`--payload`: a JSON object, given as is, as `-` (read from standard input) or as `@FILE` (read from FILE);
    none: {}. Reads at most a tick's size; anything else is a usage error (exit 2) on one line."""
    if text is None:
        return {}
    name = "--payload"
    raw: str | bytes = text
    if text == "-":
        name = "--payload - (standard input)"
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise CliError(f"{name}: there is no standard input to read", EX_USAGE)
        raw = _bounded(stdin, name)
    elif text.startswith("@"):
        path = os.path.expanduser(text[1:])
        name = f"--payload @{text[1:]}"
        if not path:
            raise CliError("--payload @ names no file (use @FILE, or - for standard input)", EX_USAGE)
        try:
            with open(path, "rb") as fh:
                raw = _bounded(fh, name)
        except OSError as exc:
            raise CliError(f"{name}: cannot read it: {exc.strerror or exc}", EX_USAGE) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:  # a UnicodeDecodeError too
        raise CliError(f"{name} is not valid JSON: {exc}", EX_USAGE) from None
    if not isinstance(data, dict):
        raise CliError(f"{name} must be a JSON object, not {_json_kind(data)}", EX_USAGE)
    return data


def _bounded(stream: BinaryIO, name: str) -> bytes:
    """At most a tick's size from `stream`: a larger payload could never be enqueued, so it is not read whole."""
    from maestro_py.bus.tick import MAX_BASE_BYTES

    data = stream.read(MAX_BASE_BYTES + 1)
    if len(data) > MAX_BASE_BYTES:
        raise CliError(f"{name} is larger than {MAX_BASE_BYTES} bytes, more than a tick can hold", EX_USAGE)
    return data


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null", int: "a number",
             float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def load_breakers(c: Context) -> tuple[Breakers, CircuitFile]:
    """The persisted breakers and their file; an unreadable circuit file is a one-line error."""
    from maestro_py.ops import views  # imported here: only the commands that show or change circuits pay for it

    try:
        return views.load_breakers(c.layout)
    except views.CircuitFileInvalid as exc:
        raise CliError(str(exc)) from None


def open_circuits(c: Context) -> dict[str, Circuit]:
    """Open and half-open circuits by name, sorted (the auth halt included)."""
    from maestro_py.ops import views

    try:
        return views.open_circuits(c.layout)
    except views.CircuitFileInvalid as exc:
        raise CliError(str(exc)) from None


def budget_summary(c: Context, *, lenient: bool = False) -> list[dict[str, Any]]:
    """The budget as the daemon sees it (`ops.views.budget_rows`), for `status` and `budget`. `lenient`: an invalid
    registry leaves out the per-cadence limits instead of failing (the daemon keeps its previous registry)."""
    from maestro_py.clock import SystemClock
    from maestro_py.ops import views

    registry = c.registry() if not lenient else registry_or_none(c)
    return views.budget_rows(c.layout, c.settings(), registry, SystemClock().now())


def registry_or_none(c: Context) -> Registry | None:
    try:
        return Registry.load(c.layout)
    except RegistryError:
        return None


def figure_lines(row: dict[str, Any]) -> list[str]:
    """A budget row's total, spent, reserved and remaining, one line per unit (`budget`, `governor show`)."""
    return [f"  {unit:<6} total {fmt_amount(row['total'][unit], unit)}  spent {fmt_amount(row['spent'][unit], unit)}"
            f"  reserved {fmt_amount(row['reserved'][unit], unit)}"
            f"  remaining {_left(row['remaining'][unit], unit)}" for unit in ("tokens", "usd")]


def _left(value: Any, unit: str) -> str:
    """What is left: never below zero; a budget spent past its limit (a run costs more than it reserved) says by
    how much."""
    if isinstance(value, (int, float)) and value < 0:
        return f"{fmt_amount(0 if unit == 'tokens' else 0.0, unit)} (over by {fmt_amount(-value, unit)})"
    return fmt_amount(value, unit)


def fmt_amount(value: Any, unit: str) -> str:
    """A budget amount as `status` and `budget` print it (None is unlimited)."""
    if value is None:
        return "unlimited"
    return f"${value:.4f}" if unit == "usd" else f"{value:,}"


def tick_id_arg(c: Context, text: str, *, dead_letters: bool = False) -> str:
    """The tick id `text` names: the id, a unique prefix, or the 6-character suffix of the per-run log names
    (`ops.ticks.resolve`), among every tick (or the dead letters). Ambiguous or too short: exit 2; none: exit 1."""
    from maestro_py.bus.operator import STATES
    from maestro_py.bus.store import Bus
    from maestro_py.ops import ticks

    if dead_letters:
        ids = dict.fromkeys(ticks.dlq_names(c.layout), "")
    else:
        ids = {tick_id: STATES[folder] for tick_id, folder in Bus(c.layout).tick_ids().items()}
    try:
        return ticks.resolve(text, ids)
    except (ticks.AmbiguousTickId, ticks.TickIdTooShort) as exc:
        raise CliError(str(exc), EX_USAGE) from None
    except ticks.NoSuchTick as exc:
        raise CliError(f"{exc}" + (" in dlq/ (see `maestro dlq list`)" if dead_letters else ""), 1) from None


# -- shell completion -------------------------------------------------------------------------------------------
# `shell_complete=` callbacks for click's completion (`_MAESTRO_COMPLETE=bash_complete` …): cadence names and tick ids
# from the root's folder listings and registry only (no daemon, no tick file read), at most MAX_COMPLETIONS, and
# never an error: a root that cannot be read completes nothing. A new option takes one by `shell_complete=
# complete_cadence` (`runs --cadence`).

MAX_COMPLETIONS = 500  # the newest ids (ids sort by enqueue time) when more match: type more to narrow


def complete_cadence(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The cadence names of the root (its registry's; from an invalid registry, its tables and prompt files)."""
    try:
        layout = _completion_layout(ctx)
        try:
            names = Registry.load(layout).names()
        except Exception:  # noqa: BLE001 - an invalid registry still names its cadences
            names = _cadence_names(layout)
        return _items([n for n in names if n.startswith(incomplete)], {})
    except Exception:  # noqa: BLE001 - completion must never fail the shell
        return []


def complete_tick_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Every tick id (`tick show`, `logs --id`), with the folder it is in."""
    return _complete_ids(ctx, incomplete, None)


def complete_queued_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The ids of queued ticks, in `inbox/` (`tick cancel`, `tick retry-now`)."""
    from maestro_py.paths import Folder

    return _complete_ids(ctx, incomplete, Folder.INBOX)


def complete_running_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The ids of running ticks, in `claimed/` (`tick kill`)."""
    from maestro_py.paths import Folder

    return _complete_ids(ctx, incomplete, Folder.CLAIMED)


def complete_dead_letter(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """What `dlq show`/`replay` take: dead letters' ids and quarantined files' names."""
    try:
        from maestro_py.ops.ticks import dlq_names

        names = [n for n in dlq_names(_completion_layout(ctx)) if n.startswith(incomplete)]
        return _items(names[-MAX_COMPLETIONS:], dict.fromkeys(names, "dlq"))
    except Exception:  # noqa: BLE001 - completion must never fail the shell
        return []


def _complete_ids(ctx: click.Context, incomplete: str, folder: Any) -> list[Any]:
    from maestro_py.bus.operator import STATES
    from maestro_py.bus.store import Bus

    try:
        bus = Bus(_completion_layout(ctx))
        found = bus.tick_ids() if folder is None else bus.tick_ids([folder])
        ids = sorted(i for i in found if i.startswith(incomplete))[-MAX_COMPLETIONS:]
        return _items(ids, {i: STATES[found[i]] for i in ids})
    except Exception:  # noqa: BLE001 - completion must never fail the shell
        return []


def _completion_layout(ctx: click.Context) -> Layout:
    """The root the command line names (`--root`, given before the command or after it), else as `Layout.resolve`."""
    from click.shell_completion import split_arg_string

    root = ctx.find_root().params.get("root")
    words = split_arg_string(os.environ.get("COMP_WORDS", ""))  # after the command, click's parse does not see it
    for i, word in enumerate(words[:-1]):
        if word == "--root":
            root = words[i + 1]
        elif word.startswith("--root="):
            root = word.split("=", 1)[1]
    return Layout.resolve(root)


def _cadence_names(layout: Layout) -> list[str]:
    """Cadence names without validating the registry: the tables of `cadences.toml` if it parses, and the prompt
    files in `cadences/`."""
    import tomllib

    from maestro_py.bus.fsio import scan_dir
    from maestro_py.bus.tick import CADENCE_RE
    from maestro_py.registry import DEFAULTS_TABLE

    names = {e.name[:-3] for e in scan_dir(layout.cadences_dir) if e.name.endswith(".md")}
    try:
        names |= {k for k, v in tomllib.loads(layout.registry_file.read_text(encoding="utf-8")).items()
                  if isinstance(v, dict)}
    except (OSError, ValueError):
        pass
    return sorted(n for n in names if n != DEFAULTS_TABLE and CADENCE_RE.match(n))


def _items(values: list[str], helps: dict[str, str]) -> list[Any]:
    from click.shell_completion import CompletionItem

    return [CompletionItem(v, help=helps.get(v) or None) for v in values]
