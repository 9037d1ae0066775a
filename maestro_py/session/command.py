"""What a `claude --print` sub-session is started with: binary, argv, environment, prompt (a `SpawnSpec`),
and the fingerprint of its credentials."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maestro_py.errors import SpawnError
from maestro_py.bus.tick import Tick

# Set in the child unless the operator set them: without them the CLI retries ~3 minutes (even on 401)
# before the daemon's own policies can act, and sends every prompt a second time for a billed title.
CHILD_DEFAULTS = {
    "CLAUDE_CODE_MAX_RETRIES": "2",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
BASE_ARGS = ("--print", "--output-format", "json", "--no-session-persistence")
_PLACEHOLDER_PREFIXES = ("your-api-key", "placeholder", "xxx", "sk-ant-xxx")
_TRUE = ("1", "true", "yes", "on")


def resolve_claude(env: Mapping[str, str], home: Path | None = None) -> str:
    """`CLAUDE_BIN`, then `PATH`, then the usual install places; SpawnError naming them if none exists."""
    explicit = env.get("CLAUDE_BIN", "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise SpawnError(f"CLAUDE_BIN={explicit} is not an executable file")
    found = shutil.which("claude", path=env.get("PATH", os.defpath))
    if found:
        return found
    home = home or Path(env.get("HOME", "~")).expanduser()
    candidates = [home / ".claude/local/claude", Path("/opt/homebrew/bin/claude"), Path("/usr/local/bin/claude")]
    npm_prefix = env.get("NPM_CONFIG_PREFIX") or env.get("npm_config_prefix")
    if npm_prefix:
        candidates.append(Path(npm_prefix) / "bin/claude")
    candidates += [home / ".npm-global/bin/claude", Path("/usr/bin/claude")]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise SpawnError("claude not found: set CLAUDE_BIN, or put claude on PATH "
                     "(looked in ~/.claude/local, /opt/homebrew/bin, /usr/local/bin, the npm global bin)")


def strips_api_key(env: Mapping[str, str]) -> bool:
    """True when the key must be withheld so the CLI uses subscription (OAuth) login instead."""
    if env.get("MAESTRO_PREFER_SUBSCRIPTION_AUTH", "").strip().lower() in _TRUE:
        return True
    key = env.get("ANTHROPIC_API_KEY")
    if key is None:
        return False
    key = key.strip().lower()
    return not key or key.startswith(_PLACEHOLDER_PREFIXES)


def child_env(env: Mapping[str, str], root: Path) -> dict[str, str]:
    """The sub-session's environment: the daemon's, plus AGENT_DIR and the CLI defaults."""
    out = dict(env)
    out["AGENT_DIR"] = str(root)
    for name, value in CHILD_DEFAULTS.items():
        out.setdefault(name, value)
    if strips_api_key(env):
        out.pop("ANTHROPIC_API_KEY", None)
    return out


def argv(claude: str, *, model: str | None, extra: tuple[str, ...] | list[str],
         max_budget_usd: float | None = None) -> list[str]:
    """`claude --print --output-format json --no-session-persistence` plus the cadence's flags."""
    out = [claude, *BASE_ARGS]
    if model:
        out += ["--model", model]
    if max_budget_usd is not None:
        out += ["--max-budget-usd", f"{max_budget_usd:g}"]
    out += list(extra)
    return out


def prompt(prompt_file: Path, tick: Tick) -> bytes:
    """The cadence's prompt, read now (edits apply to the next run), plus the tick's context."""
    text = prompt_file.read_text(encoding="utf-8")
    context = {"tick_id": tick.id, "cadence": tick.cadence, "source": tick.source,
               "enqueued_at": tick.enqueued_at, "attempt": tick.attempts + 1}
    if tick.payload:
        context["payload"] = tick.payload
    block = json.dumps(context, indent=2, ensure_ascii=False)
    return f"{text.rstrip()}\n\n---\nmaestro tick:\n```json\n{block}\n```\n".encode()


CREDENTIAL_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
                   "MAESTRO_PREFER_SUBSCRIPTION_AUTH", "ANTHROPIC_BASE_URL")


def credential_fingerprint(env: Mapping[str, str]) -> str:
    """A short digest of whatever decides how sub-sessions authenticate (never the secret itself)."""
    digest = hashlib.sha256()
    for name in CREDENTIAL_VARS:
        digest.update(f"{name}={env.get(name, '')}\0".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SpawnSpec:
    """Everything needed to start one sub-session."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    stdin: bytes
    stdout_log: Path
    stderr_log: Path
    timeout: float
    grace: float
    # Seconds to wait after a SIGINT to the CLI alone before the tree gets SIGTERM (0: no SIGINT).
    # The real CLI answers SIGINT by killing its own tools and exiting at once with an
    # `error_during_execution` result; after SIGTERM it may make one more billed request first.
    interrupt_first: float = 0.0
    # Bytes each log may grow by in this run: past it the run is ended and the log cut (None: no cap).
    log_max_bytes: int | None = None
