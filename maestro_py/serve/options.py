"""What the server is configured with (from `.env` and the environment), and where it may listen."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from maestro_py.bus.fsio import file_stamp
from maestro_py.config import VARS, Settings
from maestro_py.envfile import load_env
from maestro_py.errors import ConfigError
from maestro_py.loopback import is_loopback
from maestro_py.paths import Layout
from maestro_py.redact import SERVE_SECRETS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
RETRY_AFTER_FULL = 30  # seconds a client is asked to wait at the backlog ceiling: the daemon drains at its pace
RETRY_AFTER_STOP = 60  # while the emergency stop is set: an operator lifts it, not the passing of time


@dataclass(frozen=True)
class ServeOptions:
    """The server's settings: credentials, request limits, and the bus settings it enqueues under."""

    token: str | None
    webhook_secret: str | None
    max_body: int
    timeout: float
    max_inbox: int
    poll_ms: int

    @classmethod
    def from_env(cls, env: Mapping[str, str], settings: Settings) -> "ServeOptions":
        """Parse the `maestro serve` settings (a bad one is a ConfigError naming the variable)."""
        def get(name: str) -> Any:
            var = VARS[name]
            raw = env.get(name, "").strip() or var.default
            try:
                return var.parse(raw)
            except ValueError as exc:
                shown = "…" if name in SERVE_SECRETS else raw  # a rejected secret is still a secret
                raise ConfigError(f"{name}={shown!r}: {exc}") from None

        return cls(token=get("MAESTRO_SERVE_TOKEN"), webhook_secret=get("MAESTRO_WEBHOOK_SECRET"),
                   max_body=get("MAESTRO_SERVE_MAX_BODY_BYTES"), timeout=get("MAESTRO_SERVE_TIMEOUT_SECONDS"),
                   max_inbox=settings.max_inbox, poll_ms=settings.poll_ms)

    @property
    def auth_words(self) -> str:
        """How requests are authenticated, for the start-up line (never the secrets themselves)."""
        ways = [w for w, on in (("bearer token", self.token), ("webhook signature", self.webhook_secret)) if on]
        return " or ".join(ways) if ways else "none: open to loopback requests only"


def check_bind(host: str, options: ServeOptions) -> None:
    """Refuse to listen off loopback without a token: the triggers and the page would be open to the network."""
    if not is_loopback(host):
        if options.token is None:
            raise ConfigError(f"refusing to listen on {host} (not a loopback address) without MAESTRO_SERVE_TOKEN "
                              "set: anyone who can reach it could trigger runs and read the status page")


class Credentials:
    """The serve credentials in force: `.env` is looked at on each request (one stat) and, when it changed, read
    again, so a token added, rotated or removed takes effect at once, as the daemon applies `.env` edits. An
    edit that does not parse keeps the credentials in force (the daemon alerts it: `env_invalid`). Limits and the
    listening address stay as started (a restart applies them)."""

    def __init__(self, layout: Layout, options: ServeOptions, settings: Settings,
                 on_env: Callable[[dict[str, str]], None] = lambda env: None) -> None:
        self.layout = layout
        self.options = options
        self.settings = settings
        self.on_env = on_env
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        return file_stamp(self.layout.env_file)

    def current(self) -> ServeOptions:
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            try:
                env = load_env(self.layout)
                fresh = ServeOptions.from_env(env, self.settings)
            except ConfigError:
                return self.options
            self.options = replace(self.options, token=fresh.token, webhook_secret=fresh.webhook_secret)
            self.on_env(env)
        return self.options
