"""The cadence registry: tables in `cadences.toml` plus implicit cadences from `cadences/<name>.md`.

Decisions the format leaves open:
- `[defaults]` takes every key except `mode`, `prompt`, `handler`, `guard` and `schedule`: what a cadence
  runs and when is its own business, and a default for those would silently change every cadence.
  Defaults apply to table cadences and to implicit (prompt-file-only) ones; a cadence's own value replaces
  the default wholesale (lists such as `claude_args` are not concatenated).
- Without `mode`: a `guard` implies "guarded", a `handler` implies "inline" (even when a prompt file
  exists, so the handler is never silently ignored), otherwise a prompt file means "escalate".
- Keys that cannot take effect are errors, like unknown keys: `handler` outside inline, `guard` outside
  guarded, and `prompt`/`model`/`claude_args`/`max_budget_usd` on an inline cadence.
- escalate/guarded need the prompt file to exist at load time; the path is stored resolved.
- `defaults` is reserved and is never a cadence name; `get()` refuses names outside CADENCE_RE.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maestro_py.bus.tick import CADENCE_RE
from maestro_py.errors import ConfigError
from maestro_py.paths import Layout
from maestro_py import permissions
from maestro_py.permissions import Permissions
from maestro_py.registry_keys import FIELDS as CADENCE_FIELDS, Bad, Mode, show

FIELDS = {**CADENCE_FIELDS, **permissions.FIELDS}  # every key a table may hold

# \Z, not $: "$" also matches before a trailing newline, and names become file names.
DEFAULTS_TABLE = "defaults"
PER_CADENCE_ONLY = frozenset({"mode", "prompt", "handler", "guard", "schedule"})
SESSION_ONLY = ("prompt", "model", "claude_args", "max_budget_usd", "output_format", *permissions.FIELDS)


class RegistryError(ConfigError):
    """cadences.toml is unusable; the message names the file, the table/key and the problem in one line."""

    def __init__(self, path: Path, problem: str, *, table: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.table = table
        self.key = key
        self.problem = problem
        where = f" [{_label(table)}]" if table is not None else ""
        if key is not None:
            where += f" {_label(key)}:"
        super().__init__(f"{path}:{where} {problem}", file=str(path))


def _label(name: str) -> str:
    # Quoted TOML keys may hold newlines; the message must stay one line.
    return name if name.isprintable() else repr(name)


@dataclass(frozen=True)
class Cadence:
    """One cadence with its defaults applied."""

    name: str
    mode: Mode
    prompt: Path | None  # absolute, resolved (escalate/guarded)
    handler: str | None
    guard: str | None
    timeout_seconds: float | None  # None = daemon default
    max_attempts: int | None
    model: str | None
    claude_args: tuple[str, ...]
    schedule: str | None
    overlap: str
    max_budget_usd: float | None
    budget_tokens_daily: int | None
    budget_usd_daily: float | None
    reserve_tokens: int | None
    reserve_usd: float | None
    budget_exempt: bool
    backoff_seconds: tuple[float, ...] | None
    configured: bool  # True if it has a table in cadences.toml
    output_format: str = "stream-json"  # "json" for whoever relies on it (no retry or usage-limit events then)
    timezone: str | None = None  # the zone `schedule` is in (None: the machine's); systemd timers only
    webhook_events: tuple[str, ...] = ()  # signed webhooks it takes (GitHub event names, "*": any); none by default
    permissions: Permissions = Permissions()  # what a run may do (`maestro_py.permissions`)


# -- value checks ---------------------------------------------------------------

# -- loading ----------------------------------------------------------------------


class Registry:
    """The cadences of one agent root: cadences.toml tables plus prompt files under cadences/."""

    def __init__(
        self, layout: Layout, path: Path, cadences: Mapping[str, Cadence], defaults: Mapping[str, Any]
    ) -> None:
        self.layout = layout
        self.path = path
        self._root = layout.root.resolve()
        self._cadences = dict(cadences)
        self._defaults = dict(defaults)
        self.settles_at: float | None = None  # set by the daemon (monotonic): until then an unknown cadence waits

    @classmethod
    def load(cls, layout: Layout) -> "Registry":
        """Read and validate cadences.toml (a missing file is an empty registry)."""
        path = layout.registry_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(layout, path, {}, {})
        except OSError as exc:
            raise RegistryError(path, f"cannot read: {exc.strerror or exc}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RegistryError(path, f"not valid UTF-8 (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise RegistryError(path, f"invalid TOML: {exc}") from None

        for name, table in data.items():
            if not isinstance(table, dict):
                problem = f"top-level keys must be tables ([defaults] or [<cadence>]), got {show(table)}"
                raise RegistryError(path, problem, key=name)
        defaults: dict[str, Any] = {}
        if DEFAULTS_TABLE in data:
            defaults = _check_table(path, DEFAULTS_TABLE, data[DEFAULTS_TABLE], defaults_table=True)
            _check_permissions(defaults, lambda problem, key: RegistryError(path, problem, table=DEFAULTS_TABLE,
                                                                            key=key))
        cadences: dict[str, Cadence] = {}
        for name, table in data.items():
            if name == DEFAULTS_TABLE:
                continue
            if not CADENCE_RE.match(name):
                raise RegistryError(path, f"cadence name must match {CADENCE_RE.pattern}", table=name)
            own = _check_table(path, name, table, defaults_table=False)
            cadences[name] = _build(layout, path, name, own, defaults)
        return cls(layout, path, cadences, defaults)

    def get(self, name: str) -> Cadence | None:
        """The configured cadence, else an implicit escalate one if cadences/<name>.md exists, else None."""
        if name in self._cadences:
            return self._cadences[name]
        if name == DEFAULTS_TABLE or not CADENCE_RE.match(name):
            return None
        prompt = self._implicit_prompt(name)
        if prompt is None:
            return None
        return _cadence(name, "escalate", prompt, self._defaults, configured=False)

    def names(self) -> list[str]:
        """Every known cadence: configured ones plus those with a prompt file, sorted."""
        found = set(self._cadences)
        try:
            entries = list(self.layout.cadences_dir.iterdir())
        except OSError:
            entries = []
        for entry in entries:
            if entry.suffix == ".md" and self.get(entry.stem) is not None:
                found.add(entry.stem)
        return sorted(found)

    def knows(self, name: str) -> bool:
        """Whether `name` is a cadence this registry can run."""
        return self.get(name) is not None

    def _implicit_prompt(self, name: str) -> Path | None:
        # Checked on every call: dropping a prompt file in cadences/ must not need a registry reload.
        try:
            resolved = self.layout.prompt_file(name).resolve()
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self._root) or not resolved.is_file():
            return None  # a symlink out of the root is not a cadence
        return resolved


def _check_table(path: Path, table: str, raw: dict[str, Any], *, defaults_table: bool) -> dict[str, Any]:
    """Validate and convert every key of one table."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        check = FIELDS.get(key)
        if check is None:
            raise RegistryError(path, _unknown(table, key, value), table=table, key=key)
        if defaults_table and key in PER_CADENCE_ONLY:
            raise RegistryError(path, "not allowed in [defaults]; set it per cadence", table=table, key=key)
        try:
            values[key] = check(value)
        except Bad as bad:
            raise RegistryError(path, bad.problem, table=table, key=key) from None
    return values


def _unknown(table: str, key: str, value: Any) -> str:
    if isinstance(value, dict):
        # [inbox.processor] is TOML for a table "processor" inside "inbox", not a cadence name.
        return f'unknown key (for a cadence named "{table}.{key}", quote it: ["{table}.{key}"])'
    import difflib  # only for a misspelt key

    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def _build(layout: Layout, path: Path, name: str, own: dict[str, Any], defaults: dict[str, Any]) -> Cadence:
    """Settle a table's mode, check that its keys fit that mode, and resolve its prompt."""

    def fail(problem: str, key: str | None = None) -> RegistryError:
        return RegistryError(path, problem, table=name, key=key)

    default_prompt = layout.prompt_file(name)
    mode = own.get("mode")
    if mode is None:
        if "guard" in own:
            mode = "guarded"
        elif "handler" in own:
            mode = "inline"
        elif "prompt" in own or default_prompt.exists() or default_prompt.is_symlink():
            mode = "escalate"
        else:
            raise fail(f'nothing to run: add cadences/{name}.md, or set a handler for mode = "inline"')

    if "handler" in own and mode != "inline":
        raise fail(f'only used when mode = "inline" (mode is "{mode}")', "handler")
    if "guard" in own and mode != "guarded":
        raise fail(f'only used when mode = "guarded" (mode is "{mode}")', "guard")
    if mode == "inline" and "handler" not in own:
        raise fail('mode = "inline" needs a handler', "mode")
    if mode == "guarded" and "guard" not in own:
        raise fail('mode = "guarded" needs a guard', "mode")

    values = {**defaults, **own}
    if mode != "inline":
        _check_permissions(values, fail)
    prompt: Path | None = None
    if mode == "inline":
        for key in SESSION_ONLY:
            if key in own:
                raise fail('only used by escalate and guarded cadences (mode is "inline")', key)
    else:
        prompt = _resolve_prompt(layout, own.get("prompt"), default_prompt, fail)
    return _cadence(name, mode, prompt, values, configured=True)


def _check_permissions(values: Mapping[str, Any], fail: Callable[[str, str], RegistryError]) -> None:
    """A permission flag in `claude_args`, or keys that contradict each other, are load errors."""
    flag = permissions.permission_flag(values.get("claude_args", ()))
    if flag is not None:
        raise fail(f"{flag[0]} grants permissions: use {flag[1]} instead", "claude_args")
    contradiction = Permissions.of(values).problem()
    if contradiction is not None:
        raise fail(contradiction[1], contradiction[0])


def _resolve_prompt(
    layout: Layout, given: str | None, default: Path, fail: Callable[[str, str | None], RegistryError]
) -> Path:
    """The prompt's resolved path; it must be a file inside the root, after following symlinks."""
    root = layout.root.resolve()
    shown = given if given is not None else str(default.relative_to(layout.root))
    candidate = layout.root / given if given is not None else default  # an absolute `given` replaces root
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loop
        raise fail(f"cannot resolve {shown!r}: {exc}", "prompt") from None
    if not resolved.is_relative_to(root):
        raise fail(f"must stay inside the agent root {root}, but {shown!r} resolves to {resolved}", "prompt")
    if not resolved.is_file():
        raise fail(f"file not found: {shown!r} ({resolved})", "prompt")
    return resolved


def _cadence(
    name: str, mode: str, prompt: Path | None, values: Mapping[str, Any], *, configured: bool
) -> Cadence:
    return Cadence(
        name=name,
        mode=Mode(mode),
        prompt=prompt,
        handler=values.get("handler"),
        guard=values.get("guard"),
        timeout_seconds=values.get("timeout_seconds"),
        max_attempts=values.get("max_attempts"),
        model=values.get("model"),
        claude_args=values.get("claude_args", ()),
        schedule=values.get("schedule"),
        timezone=values.get("timezone"),
        webhook_events=values.get("webhook_events", ()),
        overlap=values.get("overlap", "skip"),
        max_budget_usd=values.get("max_budget_usd"),
        budget_tokens_daily=values.get("budget_tokens_daily"),
        budget_usd_daily=values.get("budget_usd_daily"),
        reserve_tokens=values.get("reserve_tokens"),
        reserve_usd=values.get("reserve_usd"),
        budget_exempt=values.get("budget_exempt", False),
        backoff_seconds=values.get("backoff_seconds"),
        configured=configured,
        output_format=values.get("output_format", "stream-json"),
        permissions=Permissions.of(values),
    )
