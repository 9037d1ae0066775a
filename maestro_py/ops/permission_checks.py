"""`maestro doctor`'s checks of what runs may do: the CLI's version against the one the permissions need, the
sandbox (present and able to run a sandboxed `true`), each cadence's effective policy in one line, and how
per-run resource limits are enforced here."""

from __future__ import annotations

import re

from maestro_py.ops.probe import Check, Level, Probe
from maestro_py.permissions import MIN_CLI
from maestro_py.registry import Registry, RegistryError
from maestro_py.registry_keys import Mode
from maestro_py.session import limits, sandbox

MIN_TEXT = ".".join(map(str, MIN_CLI))


def version_of(text: str) -> tuple[int, ...] | None:
    """`2.1.337 (Claude Code)` -> (2, 1, 337)."""
    found = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in found.groups()) if found else None


def cli_version(claude: str, printed: str) -> Check:
    """The CLI is at least the release whose settings and flags the permissions use (from its `--version`, which
    `check_claude` runs once)."""
    found = version_of(printed)
    if found is None:
        return Check("cli-version", Level.FAIL, f"{claude} --version printed no version")
    shown = ".".join(map(str, found))
    if found < MIN_CLI:
        return Check("cli-version", Level.FAIL, f"claude {shown} is older than {MIN_TEXT}, the release whose "
                                                "permission settings maestro writes; update it (`make` pins it "
                                                f"in .tools/claude, or npm install -g @anthropic-ai/claude-code@"
                                                f"{MIN_TEXT})")
    return Check("cli-version", Level.OK, f"claude {shown} (permissions need {MIN_TEXT} or newer)")


def _registry(p: Probe) -> Registry | None:
    try:
        return Registry.load(p.layout)
    except RegistryError:
        return None  # the registry check says why


def check_sandbox(p: Probe) -> Check:
    """The sandbox can run, where a cadence that runs commands requires or prefers it."""
    registry = _registry(p)
    cadences = [c for c in (registry.get(n) for n in registry.names())] if registry else []
    wanting = {c.name: c.permissions.sandbox for c in cadences
               if c is not None and c.mode != Mode.INLINE and c.permissions.runs_commands
               and c.permissions.sandbox != "off"}
    found = sandbox.probe(p.env)
    if found.ready:
        return Check("sandbox", Level.OK, f"{found.how}: a sandboxed `true` ran"
                                          + (f"; {len(wanting)} cadence(s) run commands in it" if wanting else ""))
    required = sorted(name for name, how in wanting.items() if how == "required")
    if required:
        return Check("sandbox", Level.FAIL, f"{found.problem}: {', '.join(required)} (sandbox = \"required\") are "
                                            f"held; fix: {found.fix}")
    if wanting:
        return Check("sandbox", Level.WARN, f"{found.problem}: {', '.join(sorted(wanting))} run commands "
                                            f"unsandboxed (sandbox = \"preferred\"); fix: {found.fix}")
    return Check("sandbox", Level.OK, f"not needed: no cadence runs commands ({found.problem})")


def check_permissions(p: Probe) -> list[Check]:
    """Each sub-session cadence's effective policy, one line each; resource limits and how they are enforced."""
    registry = _registry(p)
    if registry is None:
        return []
    out = []
    limited = []
    for name in registry.names():
        cadence = registry.get(name)
        if cadence is None or cadence.mode == Mode.INLINE:
            continue
        out.append(Check(f"may[{name}]", Level.OK, cadence.permissions.line()))
        if cadence.permissions.max_processes is not None:
            limited.append(name)
    how = limits.enforced_by(p.env)
    if limited and "not enforced" in how:
        out.append(Check("limits", Level.WARN, f"{', '.join(limited)} set max_processes: {how}"))
    return out
