"""Errors the daemon and the CLI branch on; each carries the data needed to act on it."""

from __future__ import annotations


class MaestroError(Exception):
    """Base class: a domain error with a one-line message fit for an operator."""


class TickInvalid(MaestroError):
    """A tick file that cannot be accepted; the message is the quarantine reason."""


class InboxFull(MaestroError):
    """The inbox holds `MAESTRO_MAX_INBOX` ticks already."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"inbox is full ({depth} ticks, MAESTRO_MAX_INBOX={limit}); try again later")
        self.depth = depth
        self.limit = limit


class TickNotQueued(MaestroError):
    """An operator's move of a queued tick whose tick is not in `inbox/`; `state` says where it is (None: nowhere)."""

    def __init__(self, message: str, state: str | None = None) -> None:
        super().__init__(message)
        self.state = state


class AlreadyRunning(MaestroError):
    """Another daemon owns this agent root."""

    def __init__(self, pid: int | None, root: str) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"another maestro daemon ({who}) already owns {root}")
        self.pid = pid


class ConfigError(MaestroError):
    """A setting or the registry is invalid; the message names the file or variable, key and problem. Where they
    are known, `file`, `line` (from 1) and `setting` (the variable) say where (`refused_edit` finds the rest)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 setting: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.setting = setting


class SpawnError(MaestroError):
    """A sub-session could not be started (binary missing, not executable, argument list too long)."""


class ClaudeUnavailable(SpawnError):
    """The `claude` executable cannot be started at all: missing, not executable, or not a program.

    Not the tick's fault and the same for every cadence: the daemon halts spawning (`_claude`) instead of
    burning attempts, and lifts the halt when the binary appears.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path  # the binary that failed (None: nothing was found to try)
