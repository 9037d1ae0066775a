"""`maestro dry-run CADENCE`: what one run would be started with now, and whether a gate would refuse it, with
nothing started and nothing written.

The sub-session's argv, working folder, environment and stdin come from `command.spawn_spec`, the function the
daemon spawns with, for a tick made as `maestro enqueue` would make it (its id is new, so the one shown is an
example). The environment is this process's merged with `.env`, as `maestro run` started here would have it (a
service's unit may add to it). Secrets are masked wherever they appear (`redact.Redactor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from maestro_py.bus.tick import Tick
from maestro_py.clock import iso
from maestro_py.config import Settings
from maestro_py.errors import SpawnError
from maestro_py.ops import gates
from maestro_py.paths import Layout
from maestro_py.redact import Redactor
from maestro_py.registry import Cadence, Registry
from maestro_py.registry_keys import Mode
from maestro_py.session import command, enforce
from maestro_py.state import observe

OWNER_PLACEHOLDER = "<daemon-owner>"  # the running daemon's token goes here; none runs now


def plan(layout: Layout, env: Mapping[str, str], settings: Settings, registry: Registry, cadence: Cadence,
         payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The run `cadence` would get now: for a sub-session its argv, cwd, environment changes, stdin, timeout and log
    files; for inline work its handler; and every gate's answer with the first that would refuse it."""
    redactor = Redactor(env)
    tick = Tick.new(cadence.name, now=now, source="dry-run", payload=payload)
    doc: dict[str, Any] = {"cadence": cadence.name, "mode": cadence.mode, "tick_id": tick.id, "at": iso(now)}
    if cadence.mode == Mode.INLINE:
        doc["inline"] = {"handler": cadence.handler or "noop",
                         "timeout_s": cadence.timeout_seconds or settings.inline_timeout}
        doc.update(gates=[], refused_by=None)
        return redactor.data(doc)
    if cadence.mode == Mode.GUARDED:
        doc["guard"] = {"guard": cadence.guard, "timeout_s": cadence.timeout_seconds or settings.inline_timeout}
    local = now.astimezone()
    stdout_log, stderr_log = layout.subsession_logs(local, cadence.name, command.log_stamp(local, 1, tick.id))
    try:
        claude = command.resolve_claude(env)
    except SpawnError:
        claude = "claude"  # the gates say why it cannot be found
    seen = observe(layout, now)
    alive = seen.running
    owner = str((seen.doc or {}).get("owner")) if alive else OWNER_PLACEHOLDER
    try:
        spec = command.spawn_spec(cadence, tick, env, layout.root, settings, owner=owner, stdout_log=stdout_log,
                                  stderr_log=stderr_log, claude=claude)
    except SpawnError as exc:  # the prompt: missing, outside the root, not UTF-8 …
        doc["start_error"] = f"the run would fail to start (an attempt burnt): {exc}"
    else:
        rules = command.enforcement_of(cadence, env, layout.root)
        doc["permissions"] = {"policy": cadence.permissions.line(), "settings_file": str(rules.settings_path),
                              "settings": rules.settings, "mcp_file": str(rules.mcp_path), "mcp": rules.mcp,
                              "flags": list(rules.flags),
                              "withheld_env": enforce.withheld(env, spec.env)}
        doc.update(argv=spec.argv, cwd=str(spec.cwd), env_changes=env_changes(env, spec.env),
                   stdin=spec.stdin.decode("utf-8", errors="replace"), timeout_s=spec.timeout, kill_grace_s=spec.grace,
                   logs=[str(stdout_log), str(stderr_log)], owner_placeholder=not alive)
    answers = gates.evaluate(layout, env, settings, registry, cadence, now)
    first = gates.refused_by(answers)
    doc.update(gates=[gate.to_json() for gate in answers], refused_by=first.to_json() if first else None)
    return redactor.data(doc)


def env_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[dict[str, Any]]:
    """What the sub-session's environment adds or changes, by name (values masked by the caller); what it withholds
    is `enforce.withheld`."""
    out: list[dict[str, Any]] = []
    for name in sorted(after):
        if name not in before:
            out.append({"name": name, "change": "added", "value": after[name]})
        elif before[name] != after[name]:
            out.append({"name": name, "change": "changed", "value": after[name]})
    return out
