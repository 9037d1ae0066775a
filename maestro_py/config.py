"""Settings from the environment and the agent root's `.env` (real environment variables win)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable

from dotenv import dotenv_values

from maestro_py.backoff import parse_backoff
from maestro_py.errors import ConfigError
from maestro_py.paths import Layout


def load_env(layout: Layout, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the daemon works with: `.env` under the root, overridden by the real environment."""
    env: dict[str, str] = {}
    if layout.env_file.is_file():
        env.update({k: v for k, v in dotenv_values(layout.env_file).items() if v is not None})
    env.update(os.environ if base is None else base)
    return env


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0 or value != value:
        raise ValueError("must be a number >= 0")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a number > 0")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/true/yes or 0/false/no")


def _backoff(text: str) -> str:
    parse_backoff(text)  # validate now; the daemon builds the strategy
    return text.strip()


@dataclass(frozen=True)
class Var:
    """One environment variable: its name, default, parser and meaning (the README table comes from here)."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str


VARS: dict[str, Var] = {
    v.name: v
    for v in [
        Var("MAESTRO_AGENT_ROOT", "current directory", str, "Agent root when `--root` is not given."),
        Var("MAESTRO_POLL_MS", "1000", _positive_int, "Poll fallback interval (the watchdog wakes it sooner)."),
        Var("MAESTRO_MAX_INBOX", "1000", _positive_int, "Backlog ceiling: `maestro enqueue` exits 75 beyond it."),
        Var("MAESTRO_MAX_ATTEMPTS", "2", _positive_int, "Attempts per tick before `dlq/` (per cadence: `max_attempts`)."),
        Var("MAESTRO_SPAWN_TIMEOUT_SECONDS", "1800", _positive, "Sub-session timeout (per cadence: `timeout_seconds`)."),
        Var("MAESTRO_KILL_GRACE_SECONDS", "5", _non_negative, "SIGTERM -> SIGKILL grace when a sub-session's tree is ended."),
        Var("MAESTRO_STOP_GRACE_SECONDS", "30", _non_negative, "On SIGTERM, how long running sub-sessions may finish."),
        Var("MAESTRO_REAP_SECONDS", "30", _positive, "How often stale claims and tmp leftovers are swept."),
        Var("MAESTRO_TMP_GRACE_SECONDS", "3600", _non_negative, "Age after which a crashed writer's `tmp/` file is removed."),
        Var("MAESTRO_MAX_REAPS", "3", _positive_int, "A tick whose claim owner died this often goes to `dlq/`."),
        Var("MAESTRO_BACKOFF_SECONDS", "0,30,120", _backoff,
            "Per-cadence wait after the Nth consecutive failure (last repeats), or `exp:BASE:CAP` (full jitter)."),
        Var("MAESTRO_CIRCUIT_THRESHOLD", "3", _positive_int, "Consecutive failures that open a cadence's circuit."),
        Var("MAESTRO_CIRCUIT_OPEN_SECONDS", "1800", _positive, "How long a circuit stays open before one probe."),
        Var("MAESTRO_CIRCUIT_MAX_OPEN_SECONDS", "21600", _positive, "Cap on the open period (doubled after each failed probe)."),
        Var("MAESTRO_MAX_LIVE_SUBSESSIONS", "1", _positive_int, "Live `claude` sub-sessions at once (counted from real processes)."),
        Var("MAESTRO_PREFER_SUBSCRIPTION_AUTH", "false", _bool, "Strip ANTHROPIC_API_KEY from sub-sessions (use the CLI's login)."),
        Var("CLAUDE_BIN", "PATH, then usual install places", str, "The `claude` executable."),
        Var("CLAUDE_CODE_MAX_RETRIES", "2", str, "Set in sub-sessions unless already set (the CLI's own default retries for ~3 min)."),
        Var("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1", str, "Set in sub-sessions unless already set (no billed title request)."),
    ]
}


@dataclass(frozen=True)
class Settings:
    """Typed settings; a bad value is a ConfigError naming the variable."""

    poll_ms: int
    max_inbox: int
    max_attempts: int
    spawn_timeout: float
    kill_grace: float
    stop_grace: float
    reap_seconds: float
    tmp_grace: float
    max_reaps: int
    prefer_subscription: bool
    backoff: str
    circuit_threshold: int
    circuit_open_seconds: float
    circuit_max_open_seconds: float
    max_live: int

    _SOURCES = {
        "poll_ms": "MAESTRO_POLL_MS",
        "max_inbox": "MAESTRO_MAX_INBOX",
        "max_attempts": "MAESTRO_MAX_ATTEMPTS",
        "spawn_timeout": "MAESTRO_SPAWN_TIMEOUT_SECONDS",
        "kill_grace": "MAESTRO_KILL_GRACE_SECONDS",
        "stop_grace": "MAESTRO_STOP_GRACE_SECONDS",
        "reap_seconds": "MAESTRO_REAP_SECONDS",
        "tmp_grace": "MAESTRO_TMP_GRACE_SECONDS",
        "max_reaps": "MAESTRO_MAX_REAPS",
        "prefer_subscription": "MAESTRO_PREFER_SUBSCRIPTION_AUTH",
        "backoff": "MAESTRO_BACKOFF_SECONDS",
        "circuit_threshold": "MAESTRO_CIRCUIT_THRESHOLD",
        "circuit_open_seconds": "MAESTRO_CIRCUIT_OPEN_SECONDS",
        "circuit_max_open_seconds": "MAESTRO_CIRCUIT_MAX_OPEN_SECONDS",
        "max_live": "MAESTRO_MAX_LIVE_SUBSESSIONS",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        """Parse every setting, defaulting what is unset or empty."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = VARS[cls._SOURCES[f.name]]
            raw = env.get(var.name, "").strip() or var.default
            try:
                values[f.name] = var.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{var.name}={raw!r}: {_why(exc)}") from None
        return cls(**values)


def _why(exc: ValueError) -> str:
    text = str(exc)
    # int()/float() say "invalid literal…" / "could not convert…": say what is expected instead.
    return "not a valid value" if text.startswith(("invalid literal", "could not convert")) else text
