"""The daemon's events on stderr, one `maestro logs` line each: for journald, launchd's log file, or a terminal.

On when stderr is the journal (`JOURNAL_STREAM` names it; each line then starts with its syslog level, `<3>`
error to `<7>` debug, which journald turns into the entry's priority), under launchd, or with `maestro run
--log-stderr`. A banner says what the daemon runs with, a last line what it did. A line is written only when
stderr has room for it at once, so a reader that stopped reading never holds the loop: the line is dropped
and counted instead. The JSONL event log stays the source of truth.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from maestro_py import __version__
from maestro_py.bus.logview import Event, escape, format_event

if TYPE_CHECKING:
    from maestro_py.config import Settings
    from maestro_py.daemon.loop import Daemon
    from maestro_py.policy.budget import Budget

SYSLOG_LEVELS = {"critical": 3, "error": 3, "warn": 4, "warning": 4, "info": 6, "debug": 7}
# At most one pipe buffer (PIPE_BUF is 4096 on Linux, 512 on macOS, where launchd's stderr is a file anyway): a
# pipe or socket that polls writable takes it whole. A longer line is cut; its event is whole in the JSONL log.
MAX_LINE = 4000


def journal_stream(environ: Mapping[str, str], fd: int = 2) -> bool:
    """True if `fd` is the journal: `JOURNAL_STREAM` (device:inode) names it, as systemd sets it for a service.

    Compared, as systemd asks, so that a shell started from a service, which inherits the variable with its
    stderr pointing elsewhere, does not count."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def under_launchd(environ: Mapping[str, str]) -> bool:
    """True if launchd started us as a job: it sets `XPC_SERVICE_NAME` to the job's label. A terminal has "0",
    and an app's processes (an editor's terminal) have `application.<bundle id>…`."""
    name = environ.get("XPC_SERVICE_NAME", "")
    return name not in ("", "0") and not name.startswith("application.")


def wanted(environ: Mapping[str, str], flag: bool, fd: int = 2) -> bool:
    """Should events go to stderr: `--log-stderr`, the journal, or launchd."""
    return flag or journal_stream(environ, fd) or under_launchd(environ)


class Console:
    """An `EventLog` listener writing each event as one line on `fd`, never blocking (full: dropped, counted)."""

    def __init__(self, *, fd: int = 2, journal: bool = False, settings: Settings | None = None,
                 budget: Budget | None = None) -> None:
        self.fd = fd
        self.journal = journal  # prefix each line with its syslog level
        self.settings = settings
        self.budget = budget
        self.written = 0
        self.dropped = 0
        self._started: float | None = None  # monotonic time of daemon_started, for the stop line

    def __call__(self, event: Mapping[str, Any]) -> None:
        """One event: its line; after `daemon_started` the banner, after `daemon_stopped` the stop line."""
        level = str(event.get("level", "info"))
        self.write(level, format_event(Event("", dict(event))))
        stage = event.get("stage")
        if stage == "daemon_started":
            self._started = time.monotonic()
            self.write("info", self.banner(event))
        elif stage == "daemon_stopped":
            self.write("info", self.stop_line(event))

    def write(self, level: str, text: str) -> bool:
        """Write one line if `fd` has room for it now; False (and counted) if it was dropped."""
        prefix = f"<{SYSLOG_LEVELS.get(level.lower(), 6)}>" if self.journal else ""
        data = (prefix + text).encode("utf-8", errors="replace")
        if len(data) > MAX_LINE - 1:
            data = data[:MAX_LINE - 4].decode("utf-8", errors="ignore").encode() + "…".encode()
        try:
            # select(), not poll(): macOS's poll() does not take a terminal. Writable means a pipe has a buffer's
            # room, a socket half its buffer; a file or a terminal always is.
            if not select.select([], [self.fd], [], 0)[1]:
                self.dropped += 1
                return False
            os.write(self.fd, data + b"\n")
        except OSError:  # closed, its reader gone (EPIPE), a full disk: the daemon goes on without it
            self.dropped += 1
            return False
        self.written += 1
        return True

    def banner(self, event: Mapping[str, Any]) -> str:
        """What the daemon runs with: version, root, wake-up, limits, budgets, governor store, timeouts."""
        parts = [f"maestro {__version__} running on {event.get('root')} (pid {event.get('pid')})",
                 f"wake-up {event.get('wakeup')}" + (" (--once)" if event.get("once") else "")]
        s = self.settings
        if s is not None:
            live = f"max live {s.max_live}"
            if s.governor_url is not None:
                from maestro_py.redact import mask_url

                fleet = "unlimited" if s.fleet_max_live is None else s.fleet_max_live
                live += f", fleet max live {fleet}; governor store {mask_url(s.governor_url)}"
            parts.append(f"limits: {live}, max attempts {s.max_attempts}, circuit after {s.circuit_threshold} "
                         "failures")
        if self.budget is not None:
            parts.append(f"budgets: {budget_words(self.budget)}")
        if s is not None:
            parts.append(f"timeouts: spawn {s.spawn_timeout:g} s, inline {s.inline_timeout:g} s, kill grace "
                         f"{s.kill_grace:g} s, stop grace {s.stop_grace:g} s")
        return escape("; ".join(parts))

    def stop_line(self, event: Mapping[str, Any]) -> str:
        """How long the daemon ran and its counters (those above zero), and lines this console dropped."""
        counters = event.get("counters") if isinstance(event.get("counters"), dict) else {}
        shown = " ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v)
        ran = "" if self._started is None else f" after {time.monotonic() - self._started:.1f} s"
        return escape(f"maestro stopped (pid {event.get('pid')}){ran}: {shown or 'nothing done'}; "
                      f"{self.dropped} stderr line(s) dropped")


def budget_words(budget: Budget) -> str:
    """The limits in force, e.g. `daily 2,000,000 tokens / $5.00; cadence memo daily $1.00`, or `none`."""
    out = []
    scopes = [("", window, limit) for window, limit in budget.global_limits.items()]
    scopes += [(f"cadence {name} ", "daily", limit) for name, limit in sorted(budget.cadence_limits.items())]
    for scope, window, limit in scopes:
        amounts = ([f"{limit.tokens:,} tokens"] if limit.tokens is not None else []) + (
            [f"${limit.usd:,.2f}"] if limit.usd is not None else [])
        if amounts:
            out.append(f"{scope}{window} {' / '.join(amounts)}")
    return "; ".join(out) if out else "none"


class JournalFormatter(logging.Formatter):
    """The daemon's own log lines (disk trouble, a bug) with their syslog level in front, for journald."""

    def format(self, record: logging.LogRecord) -> str:
        level = 3 if record.levelno >= logging.ERROR else 4 if record.levelno >= logging.WARNING else 6
        return f"<{level}>{super().format(record)}"


def attach(daemon: Daemon, *, journal: bool, fd: int = 2) -> Console:
    """Write `daemon`'s events on `fd` from now on (its metrics count the lines dropped)."""
    console = Console(fd=fd, journal=journal, settings=daemon.settings, budget=daemon.budget)
    daemon.events.listeners.append(console)
    daemon.metrics.stderr_dropped = lambda: console.dropped
    return console
