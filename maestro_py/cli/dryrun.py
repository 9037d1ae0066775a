"""`maestro dry-run CADENCE [--payload JSON]`: the exact run a tick would get now, and which gate would refuse it
(`ops.dryrun.plan`); nothing is started or written. Exit 0 if it would start now, 1 if not (the reason printed)."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

from maestro_py.bus.logview import escape
from maestro_py.cli.common import EX_USAGE, CliError, Context, complete_cadence, pass_ctx, payload_arg, payload_option
from maestro_py.clock import SystemClock


@click.command("dry-run")
@click.argument("cadence", shell_complete=complete_cadence)
@payload_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@pass_ctx
def dry_run(c: Context, cadence: str, payload: str | None, as_json: bool) -> int:
    """Show the argv, cwd, environment changes and stdin a run of CADENCE would get, and which gate holds it now."""
    from maestro_py.ops import dryrun, views

    data = payload_arg(payload)
    registry = c.registry()
    found = registry.get(cadence)
    if found is None:
        raise CliError(f"unknown cadence {cadence!r}: no entry in cadences.toml and no cadences/{cadence}.md", EX_USAGE)
    try:
        doc = dryrun.plan(c.layout, c.env, c.settings(), registry, found, data, SystemClock().now())
    except views.CircuitFileInvalid as exc:
        raise CliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for line in plan_lines(doc):
            click.echo(escape(line))
    return 1 if doc.get("refused_by") or doc.get("start_error") else 0


def plan_lines(doc: dict[str, Any]) -> list[str]:
    """The plan as text, one terminal line each (the caller escapes them)."""
    lines = [f"dry run of {doc['cadence']} ({doc['mode']}): nothing is started"]
    if "inline" in doc:
        inline = doc["inline"]
        return lines + [f"inline handler {inline['handler']} runs in the daemon's loop (timeout {inline['timeout_s']:g} s)"
                        ": no sub-session, and no gate holds inline work (not even an emergency stop)",
                        "verdict: it would run at the daemon's next loop"]
    if "guard" in doc:
        guard = doc["guard"]
        lines.append(f"first the guard {guard['guard']} runs inline (timeout {guard['timeout_s']:g} s); only if it says "
                     "the model is needed does this sub-session start:")
    if doc.get("start_error"):
        lines.append(doc["start_error"])
    else:
        lines += [f"argv: {shlex.join(doc['argv'])}", f"cwd: {doc['cwd']}",
                  f"timeout: {doc['timeout_s']:g} s (then the process tree is ended, SIGKILL after {doc['kill_grace_s']:g} s)",
                  "environment: this shell's with .env merged in, as a daemon started here would have it, and:"]
        for change in doc["env_changes"]:
            sign = {"added": "+", "changed": "~"}[change["change"]]
            lines.append(f"  {sign} {change['name']}={change['value']}")
        permissions = doc["permissions"]
        withheld = permissions["withheld_env"]
        lines.append(f"  withheld ({len(withheld)}, names only): {', '.join(withheld) or 'none'}")
        if doc.get("owner_placeholder"):
            lines.append("  (no daemon runs now: the daemon that spawns it puts its own token in place of <daemon-owner>)")
        lines.append(f"permissions: {permissions['policy']}")
        lines.append(f"  flags: {shlex.join(permissions['flags'])}")
        lines.append(f"  settings file {permissions['settings_file']} (written at its first run, 0600):")
        lines += [f"  | {line}" for line in json.dumps(permissions["settings"], indent=2, sort_keys=True).split("\n")]
        lines.append(f"logs: {doc['logs'][0]}  (and .stderr.log)")
        stdin = doc["stdin"]
        lines.append(f"stdin ({len(stdin.encode())} bytes: the prompt, then the tick block; the tick id is an example):")
        lines += [f"  | {line}" for line in stdin.rstrip("\n").split("\n")]
    lines.append("gates, in the daemon's order:")
    for gate in doc["gates"]:
        lines.append(f"  {'HOLDS' if gate['holds'] else 'ok   '} {gate['gate']}: {gate['why']}")
    first = doc.get("refused_by")
    if first:
        lines.append(f"verdict: refused now by {first['gate']} (the tick would wait in inbox/, no attempt burnt): "
                     f"{first['why']}")
    elif doc.get("start_error"):
        lines.append("verdict: the gates would let it start, but it would fail to start")
    else:
        lines.append("verdict: it would start at the daemon's next loop")
    return lines
