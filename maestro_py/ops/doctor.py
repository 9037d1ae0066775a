"""`maestro doctor`: small independent checks, each returning one `Check` (ok / warn / fail + a detail).

Everything a check touches is injected through `Probe` (env, layout, clock, the HTTP call, the
subprocess call, disk usage), so tests run them against real files without the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from maestro_py.bus.owner import Owner
from maestro_py.bus.store import CLAIM_SEP, Bus
from maestro_py.config import Settings, unknown_settings
from maestro_py.errors import ConfigError, SpawnError
from maestro_py.ops import views, when
from maestro_py.ops.permission_checks import check_permissions, check_sandbox, cli_version
from maestro_py.ops.probe import Check, Level, Probe
from maestro_py.ops.service_checks import check_services
from maestro_py.ops.spend_checks import check_budget, check_gates, check_governor
from maestro_py.paths import Folder
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING
from maestro_py.policy.emergency import read_stop_file
from maestro_py.redact import Redactor
from maestro_py.registry import Registry, RegistryError
from maestro_py.session import command
from maestro_py.state import Condition, judge

DEFAULT_API = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
PING_MODEL = "claude-haiku-4-5"
API_TIMEOUT = 8.0
VERSION_TIMEOUT = 10.0
MB = 1024 * 1024
DISK_FAIL = 100 * MB
DISK_WARN = 1024 * MB
SUBSCRIPTION_FIX = "prefer subscription auth with MAESTRO_PREFER_SUBSCRIPTION_AUTH=1 (then run `claude` once to log in)"


# -- configuration ------------------------------------------------------------------------------

def check_env_file(p: Probe) -> Check:
    """`.env` present (and not readable by others, as it holds the key)."""
    path = p.layout.env_file
    if not path.is_file():
        return Check("env", Level.WARN, f"{path} is missing: settings come from the environment only "
                                        "(`maestro init` creates it)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Check("env", Level.WARN, f"{path} is mode {mode:o}: others can read the key (chmod 600 it)")
    return Check("env", Level.OK, f"{path} present")


def check_settings(p: Probe) -> Check:
    """Every MAESTRO_* setting parses."""
    try:
        Settings.from_env(p.env)
    except ConfigError as exc:
        return Check("settings", Level.FAIL, str(exc))
    unknown = unknown_settings(p.env)
    if unknown:
        return Check("settings", Level.WARN, "; ".join(unknown))
    return Check("settings", Level.OK, "all settings valid")


def check_registry(p: Probe) -> Check:
    """cadences.toml loads."""
    try:
        registry = Registry.load(p.layout)
    except RegistryError as exc:
        return Check("registry", Level.FAIL, str(exc))
    names = registry.names()
    if not names:
        return Check("registry", Level.WARN, "no cadences: add cadences/<name>.md or a table to cadences.toml")
    shown = ", ".join(names[:8]) + (f" … (+{len(names) - 8})" if len(names) > 8 else "")
    return Check("registry", Level.OK, f"{len(names)} cadence(s): {shown}")


def check_prompts(p: Probe) -> Check:
    """Every cadence's prompt file is there and readable as UTF-8 (prompts are read at spawn time)."""
    try:
        registry = Registry.load(p.layout)
    except RegistryError:
        return Check("prompts", Level.WARN, "skipped: the registry is invalid")
    bad: list[str] = []
    empty: list[str] = []
    count = 0
    for name in registry.names():
        cadence = registry.get(name)
        if cadence is None or cadence.prompt is None:
            continue
        count += 1
        try:
            if not cadence.prompt.read_text(encoding="utf-8").strip():
                empty.append(name)
        except (OSError, UnicodeDecodeError) as exc:
            bad.append(f"{name} ({cadence.prompt}: {getattr(exc, 'strerror', None) or exc})")
    if bad:
        return Check("prompts", Level.FAIL, "unreadable prompt: " + "; ".join(bad))
    if empty:
        return Check("prompts", Level.WARN, "empty prompt: " + ", ".join(empty))
    return Check("prompts", Level.OK, f"{count} prompt file(s) readable")


# -- claude and the credential ------------------------------------------------------------------

def check_claude(p: Probe) -> Check | list[Check]:
    """The `claude` executable is found and answers `--version` with the daemon's child environment, a release
    the permissions can use."""
    try:
        claude = command.resolve_claude(p.env)
    except SpawnError as exc:
        return Check("claude", Level.FAIL, str(exc))
    env = command.child_env(p.env, p.layout.root)
    cwd = p.layout.root if p.layout.root.is_dir() else Path.cwd()
    try:
        code, out, err = p.run([claude, "--version"], env, cwd, VERSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Check("claude", Level.FAIL, f"{claude} --version did not answer within {VERSION_TIMEOUT:g} s")
    except OSError as exc:
        return Check("claude", Level.FAIL, f"cannot run {claude}: {exc.strerror or exc}")
    if code != 0:
        last = (err.strip() or out.strip()).splitlines()[-1:] or ["no output"]
        return Check("claude", Level.FAIL, f"{claude} --version exited {code}: {last[0][:200]}")
    version = out.strip().splitlines()[0] if out.strip() else "unknown version"
    return [Check("claude", Level.OK, f"{claude} ({version})"), cli_version(claude, out)]


def check_credential(p: Probe) -> Check:
    """Which credential the CLI will use; for an API key, one 1-token request proves it works."""
    key = (p.env.get("ANTHROPIC_API_KEY") or "").strip()
    if command.strips_api_key(p.env) or not key:
        return _subscription(p, command.credential_source(p.env))
    if p.offline:
        return Check("credential", Level.WARN, "skipped (--offline)")
    base = (p.env.get("ANTHROPIC_BASE_URL") or "").strip() or DEFAULT_API
    url = base.rstrip("/") + "/v1/messages"
    headers = {"x-api-key": key, "anthropic-version": API_VERSION, "content-type": "application/json"}
    body = json.dumps({"model": PING_MODEL, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "ping"}]}).encode()
    try:
        status, answer = p.http_post(url, headers, body, API_TIMEOUT)
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        reason = getattr(exc, "reason", None) or exc
        return Check("credential", Level.WARN, f"cannot reach {url}: {reason} (the key was not checked)")
    if status == 200:
        return Check("credential", Level.OK, f"API key accepted by {base} (1-token request, HTTP 200)")
    message = _api_message(answer)
    if status == 401:
        return Check("credential", Level.FAIL,
                     f"API key rejected by {base} (HTTP 401{': ' + message if message else ''}); fix: replace "
                     f"ANTHROPIC_API_KEY in {p.layout.env_file}, or {SUBSCRIPTION_FIX}")
    return Check("credential", Level.WARN, f"HTTP {status} from {url}{': ' + message if message else ''}")


def _subscription(p: Probe, source: str) -> Check:
    """The credential when it is not an API key: an OAuth token from the environment, or the CLI's stored login."""
    preferred = command.prefers_subscription(p.env)
    why = "MAESTRO_PREFER_SUBSCRIPTION_AUTH is set" if preferred else "no usable ANTHROPIC_API_KEY"
    if source == command.API_KEY:  # an ANTHROPIC_AUTH_TOKEN without a key
        return Check("credential", Level.OK, "ANTHROPIC_AUTH_TOKEN from the environment (not verified)")
    if source == command.OAUTH_TOKEN:
        return Check("credential", Level.OK, f"subscription auth ({why}): the OAuth token CLAUDE_CODE_OAUTH_TOKEN "
                                             "from the environment (not verified)")
    login = command.login_file(p.env)
    fix = (f"for a service, run `claude setup-token` and put its token in {p.layout.env_file} as "
           "CLAUDE_CODE_OAUTH_TOKEN")
    if login.is_file():
        return Check("credential", Level.WARN, f"subscription auth ({why}): the interactive login in {login.parent} "
                                               "(not verified); it expires in an unattended service (the CLI does "
                                               f"not refresh it in --print mode): {fix}")
    return Check("credential", Level.WARN, f"subscription auth ({why}): no login in {login.parent}: {fix}, or run "
                                           "`claude` once to log in (on macOS that login is kept in the Keychain)")


def _api_message(answer: bytes) -> str:
    try:
        doc = json.loads(answer)
        return str(doc["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return answer.decode(errors="replace").strip().replace("\n", " ")[:200]


# -- the running system -------------------------------------------------------------------------

def check_writable(p: Probe) -> Check:
    """The daemon can create files where it writes: the bus's tmp/, state/ (ledger) and the logs."""
    lay = p.layout
    problems: list[str] = []
    missing: list[str] = []
    for folder in (lay.folder(Folder.TMP), lay.state_dir, lay.logs_dir):
        if not folder.is_dir():
            missing.append(str(folder))
            continue
        try:
            fd, name = tempfile.mkstemp(prefix=".doctor-", dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            problems.append(f"{folder}: {exc.strerror or exc}")
    if problems:
        return Check("writable", Level.FAIL, "cannot write in " + "; ".join(problems))
    if missing:
        return Check("writable", Level.WARN, "missing (`maestro init` or `maestro run` creates them): "
                                             + ", ".join(missing))
    return Check("writable", Level.OK, "state/cadence-bus/tmp, state and logs are writable")


def check_daemon(p: Probe) -> Check:
    """The daemon holds the lock and its heartbeat is fresh: `maestro status`'s judgment (`state.judge`), in its words.
    An invalid setting, which makes that judgment a configuration error, is the settings check's to report."""
    health = judge(p.layout, p.now(), p.env)
    cond, words = health.condition, health.daemon_words
    if cond is Condition.NOT_RUNNING:
        return Check("daemon", Level.WARN, f"{words} (start `maestro run`, or install the service)")
    if cond is Condition.NO_STATUS:
        return Check("daemon", Level.WARN, words)
    if cond is Condition.STALE:
        return Check("daemon", Level.FAIL, words)
    if cond is Condition.OTHER_PID:
        return Check("daemon", Level.WARN, f"{words} (just restarted?)")
    doc = health.seen.doc or {}
    if doc.get("restart_required"):
        return Check("daemon", Level.WARN, f"running, but {', '.join(doc['restart_required'])} changed in .env: "
                                           "restart the daemon to apply it")
    return Check("daemon", Level.OK, words)


def check_claims(p: Probe) -> Check:
    """Claims whose owner process is gone (the daemon requeues them at start-up and every reap)."""
    try:
        names = [e.name for e in os.scandir(p.layout.folder(Folder.CLAIMED))]
    except FileNotFoundError:
        names = []
    stale = 0
    for name in names:
        stem = name[:-5] if name.endswith(".json") else name
        owner = Owner.parse(stem.rpartition(CLAIM_SEP)[2]) if CLAIM_SEP in stem else None
        if owner is None or not owner.is_alive():
            stale += 1
    if stale:
        return Check("claims", Level.WARN, f"{stale} of {len(names)} claim(s) held by a dead process: a running "
                                           "daemon requeues them within MAESTRO_REAP_SECONDS")
    return Check("claims", Level.OK, f"{len(names)} claim(s), no stale ones")


def check_dlq(p: Probe) -> Check:
    """Dead letters waiting for an operator."""
    count = Bus(p.layout).depth(Folder.DLQ)
    if count:
        return Check("dlq", Level.WARN, f"{count} dead letter(s): `maestro dlq list`")
    return Check("dlq", Level.OK, "empty")


def check_stop(p: Probe) -> Check:
    """The emergency stop is not set."""
    reason = read_stop_file(p.layout.stop_file)
    if reason is None:
        return Check("stop", Level.OK, "no emergency stop")
    return Check("stop", Level.WARN, f"emergency stop is set ({reason}): nothing spawns until `maestro resume`")


def check_circuits(p: Probe) -> list[Check]:
    """The auth halt and the `claude` halt (fail), and open per-cadence circuits (warn)."""
    try:
        open_ = views.open_circuits(p.layout)
    except views.CircuitFileInvalid as exc:
        return [Check("circuits", Level.FAIL, str(exc))]
    out: list[Check] = []
    halt = open_.pop(AUTH_HALT, None)
    if halt is not None:
        fix = command.auth_fix(subscription=command.prefers_subscription(p.env))
        out.append(Check("auth-halt", Level.FAIL, f"no sub-session will spawn ({halt.last_error}); {fix}"))
    else:
        out.append(Check("auth-halt", Level.OK, "no auth halt"))
    missing = open_.pop(CLAUDE_MISSING, None)
    if missing is not None:  # the daemon lifts it itself once `claude` can be found; until then nothing spawns
        out.append(Check("claude-halt", Level.FAIL, f"no sub-session will spawn ({missing.last_error}); "
                                                    f"{command.claude_fix()}"))
    if open_:
        shown = ", ".join(f"{n} ({c.state.value} until {when.local(c.open_until) if c.open_until else 'reset'})"
                          for n, c in open_.items())
        out.append(Check("circuits", Level.WARN, f"{len(open_)} open: {shown}; `maestro circuit list`"))
    else:
        out.append(Check("circuits", Level.OK, "all closed"))
    return out


def check_disk(p: Probe) -> Check:
    """Free space on the root's filesystem: fail under 100 MB, warn under 1 GB."""
    path = p.layout.root
    while not path.exists() and path != path.parent:
        path = path.parent
    free = p.disk_usage(path).free
    detail = f"{free / MB:,.0f} MB free on {path}"
    if free < DISK_FAIL:
        return Check("disk", Level.FAIL, detail + " (below 100 MB: ticks, logs and the ledger may fail to write)")
    if free < DISK_WARN:
        return Check("disk", Level.WARN, detail + " (below 1 GB)")
    return Check("disk", Level.OK, detail)


CHECKS: tuple[Callable[[Probe], Check | list[Check]], ...] = (
    check_env_file, check_settings, check_registry, check_prompts, check_claude, check_sandbox,
    check_permissions, check_credential,
    check_writable, check_daemon, check_claims, check_dlq, check_stop, check_circuits, check_budget,
    check_governor, check_gates, check_services, check_disk,
)


def run_checks(probe: Probe, checks: tuple[Callable[[Probe], Check | list[Check]], ...] = CHECKS) -> list[Check]:
    """Run every check (a crashing check becomes a fail) and mask secrets in every detail."""
    redactor = Redactor(probe.env)
    out: list[Check] = []
    for check in checks:
        try:
            result = check(probe)
        except Exception as exc:  # noqa: BLE001 - the doctor must report, not crash
            name = check.__name__.removeprefix("check_")
            result = Check(name, Level.FAIL, f"check crashed: {type(exc).__name__}: {exc}")
        for item in result if isinstance(result, list) else [result]:
            detail = " ".join(redactor.text(item.detail).split())  # one line, no secret
            out.append(Check(item.name, item.level, detail))
    return out


def failed(checks: list[Check]) -> bool:
    """True if any check failed."""
    return any(c.level is Level.FAIL for c in checks)
