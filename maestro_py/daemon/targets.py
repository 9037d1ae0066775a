"""Where alerts go: apprise URLs and a notify command, each send bounded by a deadline.

A target answers a send with None (taken) or one line saying why not; it never raises, and its label names it
without a secret ("target 2 (slack)"). Apprise is imported on the first send, on the sender's thread: the
daemon does not pay for it at start-up, and `maestro enqueue` never loads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from maestro_py.redact import NOTIFY_VARS, SECRET_VARS, URL_VARS

SEND_TIMEOUT = 4.0  # seconds: apprise's connect and read timeouts, and the deadline of one whole send


class Target(Protocol):
    """One place alerts go."""

    label: str
    failing: bool  # its last send failed (its failure has been reported once)

    def send(self, title: str, body: str, level: str, doc: dict[str, Any], timeout: float) -> str | None:
        """Deliver one alert; None if taken, else why not (one line)."""


class AppriseTarget:
    """One apprise URL (`slack://…`, `ntfys://…`, `json://…`), with its own plugin instance and deadline."""

    def __init__(self, url: str, label: str) -> None:
        self.url = url
        self.label = label
        self.failing = False
        self._plugin: Any = None
        self._hung: threading.Thread | None = None  # a send that overran its deadline and has not returned

    def send(self, title: str, body: str, level: str, doc: dict[str, Any], timeout: float) -> str | None:
        """Notify through apprise in a helper thread joined with a deadline: a receiver that accepts and never
        answers costs this target `timeout` (plus apprise's own pacing), never more, and never the caller's loop."""
        if self._hung is not None and self._hung.is_alive():
            return "its previous send has not returned yet"  # one stuck thread per target at most
        plugin = self._load(timeout)
        if isinstance(plugin, str):
            return plugin
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["ok"] = plugin.notify(body=body, title=title, notify_type=level)
            except Exception as exc:  # noqa: BLE001 - a plugin's bug is one failed send
                result["error"] = f"{type(exc).__name__}: {exc}"
            result["said"] = _CAPTURE.take()

        thread = threading.Thread(target=call, name="maestro-alert-send", daemon=True)
        thread.start()
        # Apprise's own timeouts normally end it first; it also paces some services (request_rate_per_sec).
        deadline = timeout + float(getattr(plugin, "request_rate_per_sec", 0) or 0) + 1.0
        thread.join(deadline)
        if thread.is_alive():
            self._hung = thread
            return f"no answer within {deadline:g}s"
        if result.get("ok"):
            return None
        return result.get("error") or result.get("said") or "apprise reported a failure"

    def _load(self, timeout: float) -> Any:
        """The apprise plugin for the URL (built once), or why there is none."""
        if self._plugin is None:
            import apprise

            _CAPTURE.install()
            plugin = apprise.Apprise.instantiate(self.url, suppress_exceptions=True)
            said = _CAPTURE.take()
            if not plugin:
                return f"apprise does not understand this URL ({said or 'unknown service or bad form'})"
            plugin.socket_connect_timeout = plugin.socket_read_timeout = timeout
            self._plugin = plugin
        return self._plugin


class CommandTarget:
    """MAESTRO_NOTIFY_COMMAND: run without a shell, the alert as JSON on stdin, ended at its timeout."""

    def __init__(self, argv: Sequence[str], root: Path, env: Mapping[str, str], label: str = "command") -> None:
        self.argv = tuple(argv)
        self.root = root
        # The command gets the daemon's environment less every credential and notification URL.
        hidden = {*SECRET_VARS, *URL_VARS, *NOTIFY_VARS}
        self.env = {k: v for k, v in env.items() if k not in hidden}
        self.label = label
        self.failing = False

    def send(self, title: str, body: str, level: str, doc: dict[str, Any], timeout: float) -> str | None:
        """Run the command once; None if it exited 0."""
        from maestro_py import inline

        result = inline.run_command(self.argv, doc, root=self.root, env=self.env, timeout=timeout)
        if result.ok and result.error is None:
            return None
        said = result.detail.strip().splitlines()[-1:] if result.detail else []
        return "; ".join([result.error or "failed", *said])[:500]


def targets_for(urls: Sequence[str], command: Sequence[str] | None, root: Path,
                env: Mapping[str, str]) -> list[Target]:
    """A target per URL ("target N (scheme)") and one for the command, if any."""
    out: list[Target] = [AppriseTarget(url, f"target {n} ({url.split('://', 1)[0].lower()})")
                         for n, url in enumerate(urls, 1)]
    if command:
        out.append(CommandTarget(command, root, env))
    return out


class _Capture(logging.Handler):
    """What apprise logged on each thread (it says why a send failed only in its log), kept off the daemon's
    stderr: apprise's messages may name a URL, and only redacted text leaves this module."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._said: dict[int, str] = {}
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            logger = logging.getLogger("apprise")
            logger.addHandler(self)
            logger.propagate = False
            self._installed = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._said[threading.get_ident()] = record.getMessage()[:300]
        except Exception:  # noqa: BLE001 - a bad log call must not break a send
            pass

    def take(self) -> str | None:
        """The last thing apprise logged on this thread since the last take."""
        return self._said.pop(threading.get_ident(), None)


_CAPTURE = _Capture()
