"""Fakes for driving the daemon's state machine in-process: a clock moved by hand, a spawner that replays scripted
outcomes."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from maestro_py.session.metering import CliResult, Usage
from maestro_py.session.runner import RunOutcome, SpawnSpec

_pids = itertools.count(900_000)
_DIRECTIVE = re.compile(rb"\[\[fake:([a-z0-9_]+)\]\]")


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


def cli_result(kind: str) -> tuple[int | None, CliResult | None]:
    """(exit code, result) the real CLI gives for an outcome kind: ok, 400/401/403/429/500/529, garbage."""
    if kind == "ok":
        usage = Usage(0.00757, 1234, 56, 0, 0, {"claude-opus-4-8": {"input_tokens": 1234, "output_tokens": 56}})
        return 0, CliResult("success", False, None, "hi there", "sess-1", usage, {})
    if kind == "garbage":
        return 0, None
    status = int(kind)
    text = "Not logged in · Please run /login" if status == 401 else f"API Error: {status} (fake)"
    return 1, CliResult("success", True, status, text, "sess-1", Usage(0, 0, 0, 0, 0, {}), {})


@dataclass
class FakeSession:
    """A sub-session that ends when the test says so (or at once, for a scripted outcome)."""

    pid: int
    spec: SpawnSpec
    kind: str
    outcome: RunOutcome | None = None
    stop_requested: bool = False

    def finish(self, kind: str | None = None) -> None:
        code, result = cli_result(kind or self.kind)
        self.outcome = RunOutcome(self.pid, code, None, False, False, 5, result, "")

    def poll(self) -> RunOutcome | None:
        return self.outcome

    def wait(self, timeout: float | None = None) -> RunOutcome | None:
        return self.outcome

    def stop(self, grace: float | None = None) -> None:
        self.stop_requested = True
        if self.outcome is None:
            self.outcome = RunOutcome(self.pid, None, 15, False, True, 5, None, "")

    def kill(self) -> None:
        self.stop(0)


@dataclass
class FakeSpawner:
    """Replays outcomes: the prompt's `[[fake:KIND]]` directive, else `default`; `hang` never ends by itself."""

    default: str = "ok"
    sessions: list[FakeSession] = field(default_factory=list)

    def spawn(self, spec: SpawnSpec) -> FakeSession:
        match = _DIRECTIVE.search(spec.stdin)
        kind = match[1].decode() if match else self.default
        session = FakeSession(next(_pids), spec, kind)
        if kind != "hang":
            session.finish()
        self.sessions.append(session)
        return session

    @property
    def count(self) -> int:
        return len(self.sessions)

    def live(self) -> list[FakeSession]:
        return [s for s in self.sessions if s.outcome is None]


def settings_env(**overrides: Any) -> dict[str, str]:
    """A settings environment for in-process daemons (no real claude needed: the spawner is fake)."""
    env = {"MAESTRO_BACKOFF_SECONDS": "0", "MAESTRO_MAX_ATTEMPTS": "10", "CLAUDE_BIN": "/bin/true",
           "ANTHROPIC_API_KEY": "sk-ant-test-RELIABILITY-0123456789"}
    env.update({k: str(v) for k, v in overrides.items()})
    return env
