"""`maestro governor show|set|unset`: the limits every agent root sharing the governor store obeys."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from maestro_py.cli.common import EX_CONFIG, EX_USAGE, CliError, Context, figure_lines, fmt_amount, pass_ctx
from maestro_py.clock import MAX_COUNT, MAX_NUMBER, SystemClock
from maestro_py.errors import ConfigError
from maestro_py.ops import when

EX_UNAVAILABLE = 69  # sysexits: the store cannot be reached
WINDOW_OPTIONS = [(window, unit) for window in ("hourly", "daily", "monthly") for unit in ("tokens", "usd")]


def _store(c: Context, url: str | None) -> Any:
    from maestro_py.fleet import open_store

    url = url or c.settings().governor_url
    if not url:
        raise CliError("no governor store: set MAESTRO_GOVERNOR_URL in .env (sqlite:////abs/path/governor.db or "
                       "postgresql://…) or pass --url", EX_CONFIG)
    try:
        return open_store(url)
    except ConfigError as exc:
        raise CliError(str(exc), EX_CONFIG) from None


def _call(work: Any) -> Any:
    from maestro_py.fleet.model import StoreUnavailable

    try:
        return work()
    except StoreUnavailable as exc:
        raise CliError(str(exc), EX_UNAVAILABLE) from None
    except ConfigError as exc:
        raise CliError(str(exc), EX_USAGE) from None


def _usd(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (0 <= value <= MAX_NUMBER and math.isfinite(value)):
        raise click.BadParameter(f"must be a number of dollars from 0 to {MAX_NUMBER:g}")
    return value


def _zone(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"{value[:80]!r} is not a time zone (e.g. Europe/Paris, UTC)") from None
    return value


url_option = click.option("--url", default=None, help="The store (default: MAESTRO_GOVERNOR_URL).")
scope_option = click.option("--scope", required=True, help="fleet, agent:NAME or cadence:AGENT/NAME.")


@click.group()
def governor() -> None:
    """The fleet governor store: limits shared by every agent root that names it."""


@governor.command("show", short_help="Every limit in the store: spent, held, left, top agents")
@click.option("--json", "as_json", is_flag=True, help="Print the limits and figures as JSON.")
@url_option
@pass_ctx
def governor_show(c: Context, as_json: bool, url: str | None) -> None:
    """Every limit in the store with what is spent, held by live runs and left, and the live runs."""
    store = _store(c, url)
    now = SystemClock().now()
    rows, live = _call(lambda: (store.summary(now), store.live(now)))
    if as_json:
        click.echo(json.dumps({"scopes": rows, "live": live}, indent=2))
        return
    click.echo(f"{len(live)} live sub-session(s) across the fleet")
    for row in rows:
        click.echo(fleet_lines(row))


def fleet_lines(row: dict[str, Any]) -> str:
    """One store scope as `governor show` and `budget` print it."""
    zone = f", a {row['tz']} window" if row.get("tz") else ""
    resets = when.local(row["resets_at"], seconds=False)
    lines = [f"{row['scope']} {row['window']} (resets {resets}{zone}): {row['runs']} runs, {row['live']} live",
             *figure_lines(row)]
    if row["top_agents"]:
        lines.append("  top agents: " + ", ".join(f"{t['agent']} ${t['usd']:.4f}" for t in row["top_agents"]))
    if row["top_cadences"]:
        lines.append("  top cadences: " + ", ".join(f"{t['cadence']} ${t['usd']:.4f}" for t in row["top_cadences"]))
    return "\n".join(lines)


def _limit_options(f: Any) -> Any:
    for window, unit in reversed(WINDOW_OPTIONS):
        name = f"--{window}-{unit}"
        if unit == "usd":
            f = click.option(name, type=float, default=None, callback=_usd, help=f"Dollars per {window} window.")(f)
        else:
            f = click.option(name, type=click.IntRange(0, MAX_COUNT), default=None,
                             help=f"Tokens per {window} window.")(f)
    return f


@governor.command("set", short_help="Set a scope's limits (--daily-usd, --hourly-tokens, …)")
@scope_option
@_limit_options
@click.option("--tz", default=None, callback=_zone,
              help="Time zone whose midnight ends a day or month (default: each machine's own).")
@url_option
@pass_ctx
def governor_set(c: Context, scope: str, tz: str | None, url: str | None, **amounts: Any) -> None:
    """Set SCOPE's limits, e.g. `--scope fleet --daily-usd 50` (an axis not given keeps its value)."""
    given = {(w, u): amounts[f"{w}_{u}"] for w, u in WINDOW_OPTIONS if amounts[f"{w}_{u}"] is not None}
    if not given:
        raise CliError("nothing to set: give at least one of " + ", ".join(f"--{w}-{u}" for w, u in WINDOW_OPTIONS),
                       EX_USAGE)
    store = _store(c, url)
    for window in ("hourly", "daily", "monthly"):
        tokens, usd = given.get((window, "tokens")), given.get((window, "usd"))
        if tokens is None and usd is None:
            continue
        _call(lambda: store.set_limit(scope, window, tokens=tokens, usd=usd, tz=tz))
        parts = [fmt_amount(v, u) + ("" if u == "usd" else " tokens") for u, v in (("tokens", tokens), ("usd", usd))
                 if v is not None]
        click.echo(f"{scope} {window}: {' and '.join(parts)}")


@governor.command("unset")
@scope_option
@click.option("--window", type=click.Choice(["hourly", "daily", "monthly"]), default=None,
              help="Only this window (default: every window of the scope).")
@url_option
@pass_ctx
def governor_unset(c: Context, scope: str, window: str | None, url: str | None) -> None:
    """Remove SCOPE's limits (in one window, or all)."""
    store = _store(c, url)
    removed = _call(lambda: store.unset_limit(scope, window))
    click.echo(f"{scope}: {removed} limit(s) removed")
