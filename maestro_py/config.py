"""Settings from the environment and the agent root's `.env` (real environment variables win; `envfile.py` reads the
file)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable

from maestro_py.policy.backoff import parse_backoff
from maestro_py.clock import MAX_COUNT, MAX_NUMBER
from maestro_py.errors import ConfigError
from maestro_py.paths import launchd_prefix

if TYPE_CHECKING:  # the budget is built by `budget()`: `maestro enqueue` (from cron) never imports it
    from maestro_py.policy.budget import Budget, Limit

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://\S+\Z")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be an integer >= 1")
    if value > MAX_COUNT:
        raise ValueError(f"must be at most {MAX_COUNT}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):  # NaN too
        raise ValueError("must be a number >= 0")
    return _at_most_max(value)


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError("must be a number > 0")
    return _at_most_max(value)


def _at_most_max(value: float) -> float:
    if value > MAX_NUMBER:  # would overflow a date or a sum later
        raise ValueError(f"must be at most {MAX_NUMBER:g}")
    return value


def _run_log_mib(text: str) -> float:
    value = float(text)
    # Above 4 GiB a runaway run fills disks before it is stopped; below 1 MiB ordinary runs would be cut.
    if not 1 <= value <= 4096:
        raise ValueError("must be a number of MiB from 1 to 4096")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/true/yes or 0/false/no")


def _optional_int(text: str) -> int | None:
    if text.strip().lower() in ("", "unlimited", "none"):
        return None
    return _positive_int(text)


def _fraction(text: str) -> float | None:
    if text.strip().lower() in ("", "off", "none"):
        return None
    value = float(text)
    if not 0 < value <= 1:  # NaN too
        raise ValueError("must be a fraction above 0 and at most 1 (e.g. 0.8), or off")
    return value


def _optional_float(text: str) -> float | None:
    if text.strip().lower() in ("", "unlimited", "none"):
        return None
    return _positive(text)


def _governor_url(text: str) -> str | None:
    if text.strip().lower() in ("", "unset", "none", "off"):
        return None
    from maestro_py.fleet.model import check_url

    try:
        return check_url(text.strip())
    except ConfigError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


def _notify_urls(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "unset", "none", "off"):
        return ()
    from maestro_py.redact import split_urls

    urls = split_urls(text)
    for n, url in enumerate(urls, 1):
        if not _URL_RE.match(url):  # never quote it: it holds tokens
            raise ValueError(f"item {n} is not an apprise URL (scheme://…)")
    return tuple(urls)


def _notify_command(text: str) -> tuple[str, ...] | None:
    if text.strip().lower() in ("", "unset", "none", "off"):
        return None
    import shlex

    try:
        return tuple(shlex.split(text)) or None
    except ValueError as exc:  # unbalanced quotes, a trailing backslash
        raise ValueError(f"cannot split the command: {exc}") from None


def _lease_seconds(text: str) -> float:
    value = _positive(text)
    if value < 5:
        raise ValueError("must be at least 5 seconds (leases are renewed every third of it)")
    return value


def _agent(text: str) -> str | None:
    if text == "the root folder's name":
        return None
    from maestro_py.paths import agent_name

    return agent_name(text)


def _serve_secret(text: str) -> str | None:
    if text.strip().lower() in ("", "unset", "none"):
        return None
    if len(text.strip()) < 16 or any(ch.isspace() for ch in text.strip()):
        raise ValueError("must be at least 16 characters without blanks (e.g. `openssl rand -hex 32`)")
    return text.strip()


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
        Var("MAESTRO_INLINE_TIMEOUT_SECONDS", "60", _positive, "Inline handler and guard timeout (per cadence: `timeout_seconds`)."),
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
        Var("MAESTRO_DAILY_TOKEN_BUDGET", "unlimited", _optional_int, "Tokens per day (local midnight), all cadences."),
        Var("MAESTRO_DAILY_USD_BUDGET", "unlimited", _optional_float, "Dollars per day (local midnight), all cadences."),
        Var("MAESTRO_HOURLY_TOKEN_BUDGET", "unlimited", _optional_int, "Tokens per clock hour, all cadences."),
        Var("MAESTRO_HOURLY_USD_BUDGET", "unlimited", _optional_float, "Dollars per clock hour, all cadences."),
        Var("MAESTRO_QUOTA_MIN_HOLD_SECONDS", "60", _positive,
            "Shortest hold at a subscription usage limit, whatever reset time the CLI reports."),
        Var("MAESTRO_QUOTA_PAUSE_AT", "off", _fraction,
            "Subscription headroom: pause new spawns when a run reports the usage window at this fraction."),
        Var("MAESTRO_RESERVE_TOKENS", "20000", _positive, "Reservation for a cadence's first run (no history, no `reserve_tokens`)."),
        Var("MAESTRO_RESERVE_USD", "0.25", _non_negative, "Reservation in dollars for a cadence's first run."),
        Var("MAESTRO_RETENTION_DAYS", "14", _positive, "Age after which `done/` ticks and per-run logs are pruned."),
        Var("MAESTRO_LOGS_MAX_MB", "500", _positive, "Cap (MiB) on `done/` ticks + per-run logs together; oldest pruned first."),
        Var("MAESTRO_RUN_LOG_MAX_MB", "64", _run_log_mib,
            "Cap (MiB) on each log of one run: past it the run is ended and its log cut (start and end kept)."),
        Var("MAESTRO_GOVERNOR_URL", "unset", _governor_url,
            "Fleet governor store shared by many agent roots: `sqlite:////abs/path/governor.db` or `postgresql://…`."),
        Var("MAESTRO_FLEET_MAX_LIVE", "unlimited", _optional_int,
            "Live sub-sessions at once across every root sharing the governor store."),
        Var("MAESTRO_FLEET_LEASE_SECONDS", "120", _lease_seconds,
            "A fleet reservation's lease, renewed while its run lives; past it, a dead holder's run is charged."),
        Var("MAESTRO_AGENT_NAME", "the root folder's name", _agent, "This root's name in the governor store (`agent:NAME`)."),
        Var("MAESTRO_BUDGET_WARN_AT", "0.8", _fraction,
            "Soft budget threshold: one `budget_warning` event (and alert) per scope and window past this fraction."),
        Var("MAESTRO_NOTIFY_URLS", "unset", _notify_urls,
            "Where alerts go: apprise URLs separated by spaces or commas (masked everywhere)."),
        Var("MAESTRO_NOTIFY_COMMAND", "unset", _notify_command,
            "A command (no shell) given each alert as JSON on stdin, bounded by a timeout."),
        Var("MAESTRO_SERVE_TOKEN", "unset", _serve_secret,
            "`maestro serve`: the bearer token for triggers, the page and /metrics (needed to listen off loopback)."),
        Var("MAESTRO_WEBHOOK_SECRET", "unset", _serve_secret,
            "`maestro serve`: the secret of GitHub-style `X-Hub-Signature-256` webhooks (HMAC-SHA256 of the body)."),
        Var("MAESTRO_SERVE_MAX_BODY_BYTES", "1048576", _positive_int, "`maestro serve`: the largest request body (413 past it)."),
        Var("MAESTRO_SERVE_TIMEOUT_SECONDS", "10", _positive, "`maestro serve`: time a client has to send a request's body (408 past it)."),
        Var("MAESTRO_SERVICE_AUTOSYNC", "false", _bool, "The daemon runs `maestro service sync` when `cadences.toml` changes."),
        Var("MAESTRO_LAUNCHD_PREFIX", "com.maestro", launchd_prefix, "Reverse-DNS prefix of launchd labels and plist names."),
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
    inline_timeout: float
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
    daily_tokens: int | None
    daily_usd: float | None
    hourly_tokens: int | None
    hourly_usd: float | None
    quota_min_hold: float
    quota_pause_at: float | None
    reserve_tokens: float
    reserve_usd: float
    retention_days: float
    logs_max_mb: float
    run_log_max_mb: float
    governor_url: str | None
    fleet_max_live: int | None
    fleet_lease_seconds: float
    agent: str | None
    budget_warn_at: float | None
    notify_urls: tuple[str, ...]
    notify_command: tuple[str, ...] | None
    service_autosync: bool
    launchd_prefix: str

    _SOURCES = {
        "poll_ms": "MAESTRO_POLL_MS",
        "max_inbox": "MAESTRO_MAX_INBOX",
        "max_attempts": "MAESTRO_MAX_ATTEMPTS",
        "spawn_timeout": "MAESTRO_SPAWN_TIMEOUT_SECONDS",
        "inline_timeout": "MAESTRO_INLINE_TIMEOUT_SECONDS",
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
        "daily_tokens": "MAESTRO_DAILY_TOKEN_BUDGET",
        "daily_usd": "MAESTRO_DAILY_USD_BUDGET",
        "hourly_tokens": "MAESTRO_HOURLY_TOKEN_BUDGET",
        "hourly_usd": "MAESTRO_HOURLY_USD_BUDGET",
        "quota_min_hold": "MAESTRO_QUOTA_MIN_HOLD_SECONDS",
        "quota_pause_at": "MAESTRO_QUOTA_PAUSE_AT",
        "reserve_tokens": "MAESTRO_RESERVE_TOKENS",
        "reserve_usd": "MAESTRO_RESERVE_USD",
        "retention_days": "MAESTRO_RETENTION_DAYS",
        "logs_max_mb": "MAESTRO_LOGS_MAX_MB",
        "run_log_max_mb": "MAESTRO_RUN_LOG_MAX_MB",
        "governor_url": "MAESTRO_GOVERNOR_URL",
        "fleet_max_live": "MAESTRO_FLEET_MAX_LIVE",
        "fleet_lease_seconds": "MAESTRO_FLEET_LEASE_SECONDS",
        "agent": "MAESTRO_AGENT_NAME",
        "budget_warn_at": "MAESTRO_BUDGET_WARN_AT",
        "notify_urls": "MAESTRO_NOTIFY_URLS",
        "notify_command": "MAESTRO_NOTIFY_COMMAND",
        "service_autosync": "MAESTRO_SERVICE_AUTOSYNC",
        "launchd_prefix": "MAESTRO_LAUNCHD_PREFIX",
    }

    def budget(self, cadence_limits: dict[str, Limit] | None = None) -> Budget:
        """This root's budget with these limits (cadence limits from the registry): built only here (start-up, views, reload)."""
        from maestro_py.policy.budget import Estimate, Budget, Limit
        return Budget(
            global_limits={"daily": Limit(self.daily_tokens, self.daily_usd),
                           "hourly": Limit(self.hourly_tokens, self.hourly_usd)},
            cadence_limits=cadence_limits or {},
            default_estimate=Estimate(self.reserve_tokens, self.reserve_usd, "default"),
        )

    def in_force(self) -> dict[str, Any]:
        """Every setting by its variable name, as parsed (the store URL without its password): `status --json`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            name, value = self._SOURCES[f.name], getattr(self, f.name)
            out[name] = _shown(name, value) if isinstance(value, (str, tuple)) else value
        return out

    def changed(self, other: "Settings") -> list[str]:
        """The variable names whose values differ in `other`."""
        return [self._SOURCES[f.name] for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        """Parse every setting, defaulting what is unset or empty."""
        return cls(**{f.name: setting(env, cls._SOURCES[f.name]) for f in fields(cls)})


def setting(env: Mapping[str, str], name: str) -> Any:
    """One setting from `env` (its default when unset); ConfigError naming it if invalid, whatever the others hold."""
    raw = env.get(name, "").strip() or VARS[name].default
    try:
        return VARS[name].parse(raw)
    except ValueError as exc:
        shown = "…" if name in UNQUOTED else _shown(name, raw)  # a rejected secret is still a secret
        raise ConfigError(f"{name}={shown!r}: {_why(exc)}", setting=name) from None


# Settings whose rejected value an error (and the `env_invalid` event and alert made of it) never quotes: secrets,
# which the redactor knows only once they loaded, and the notification command, whose arguments may hold a token.
UNQUOTED = frozenset({"MAESTRO_SERVE_TOKEN", "MAESTRO_WEBHOOK_SECRET", "MAESTRO_NOTIFY_COMMAND"})


# MAESTRO_* names that are not settings: the sub-session mark, and the test suite's own switches.
NOT_SETTINGS = frozenset({"MAESTRO_SUBSESSION", "MAESTRO_TEST_FULL", "MAESTRO_TORTURE_SCALE", "MAESTRO_TORTURE_SEED",
                          "MAESTRO_TORTURE_EXEC", "MAESTRO_CMD"})


def unknown_settings(env: Mapping[str, str]) -> list[str]:
    """One line per `MAESTRO_*` variable that is no setting, with the closest one ("did you mean"): a misspelt
    budget must not read as "no budget configured"."""
    import difflib

    out = []
    for name in sorted(n for n in env if n.startswith("MAESTRO_") and n not in VARS and n not in NOT_SETTINGS):
        bare = {v.removeprefix("MAESTRO_"): v for v in VARS}  # the shared prefix would make everything look alike
        near = difflib.get_close_matches(name.removeprefix("MAESTRO_"), list(bare), n=1, cutoff=0.6)
        out.append(f"{name} is not a setting" + (f"; did you mean {bare[near[0]]}?" if near else ""))
    return out


def _shown(name: str, raw: Any) -> Any:
    """A setting's value as an error or `status` may quote it: a URL without its password, notification URLs as
    their schemes only."""
    if name == "MAESTRO_GOVERNOR_URL":
        from maestro_py.redact import mask_url

        return mask_url(raw)
    if name == "MAESTRO_NOTIFY_URLS":
        from maestro_py.redact import MASK

        return [f"{url.split('://', 1)[0]}://{MASK}" for url in raw] if isinstance(raw, tuple) else MASK
    return raw


def _why(exc: ValueError) -> str:
    text = str(exc)
    # int()/float() say "invalid literal…" / "could not convert…": say what is expected instead.
    return "not a valid value" if text.startswith(("invalid literal", "could not convert")) else text
