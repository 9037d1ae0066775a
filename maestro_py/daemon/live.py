"""The sub-sessions the daemon has started and not yet settled, and the live count the cap reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psutil

from maestro_py.bus.kills import Kill
from maestro_py.bus.store import Claim
from maestro_py.policy.budget import Estimate
from maestro_py.policy.guardrails import Verdict
from maestro_py.registry import Cadence
from maestro_py.session.runner import SubSession

SCAN_EVERY = 1.0  # seconds a scan of our child processes is reused for


@dataclass
class Settlement:
    """A finished run's pending settle: judged once, then carried out step by step until the tick has moved.

    A settle cut short by an I/O error is retried from here, so the spend is ledgered once and the
    guards learn of the run once, however often the bus move has to be tried again.
    """

    verdict: Verdict
    row: dict[str, Any]        # the ledger row
    details: dict[str, Any]    # what the tick's history entry records
    ledgered: bool = False


@dataclass
class Running:
    """A sub-session the daemon started and has not settled yet."""

    claim: Claim
    session: SubSession
    cadence: Cadence
    started_at: datetime
    stdout_log: str
    stderr_log: str
    fingerprint: str
    estimate: Estimate
    run_id: str | None = None              # its reservation in the governor store (None: no store)
    io_errors_at_start: int = 0
    cli_retries: bool = False              # the CLI was allowed to retry failed requests itself
    claude: tuple[str, str] | None = None  # the binary it ran, and its `command.claude_identity` then
    end_reason: str | None = None          # set when the daemon ends it (drain, emergency stop)
    policy: str = ""                       # what it was allowed and asked (`command.policy_id`)
    kill: Kill | None = None               # an operator's `maestro tick kill` of this run
    settlement: Settlement | None = None   # set when it has finished and its settle is under way


class LiveRuns:
    """Running sub-sessions by tick id; `count()` also sees leaked `claude` children (fails closed)."""

    def __init__(self, max_live: Callable[[], int], monotonic: Callable[[], float]) -> None:
        self._max_live = max_live  # MAESTRO_MAX_LIVE_SUBSESSIONS in force
        self._monotonic = monotonic
        self._by_tick: dict[str, Running] = {}
        self._leaked: set[int] = set()            # live `--print` children found by the last process scan
        self._scanned_at: float | None = None     # monotonic time of that scan

    @property
    def max_live(self) -> int:
        return self._max_live()

    def add(self, tick_id: str, run: Running) -> None:
        self._by_tick[tick_id] = run

    def get(self, tick_id: str) -> Running | None:
        return self._by_tick.get(tick_id)

    def remove(self, tick_id: str) -> None:
        del self._by_tick[tick_id]

    def items(self) -> list[tuple[str, Running]]:
        """A snapshot: settling removes entries while the caller iterates."""
        return list(self._by_tick.items())

    def __iter__(self) -> Iterator[Running]:
        return iter(list(self._by_tick.values()))

    def __len__(self) -> int:
        return len(self._by_tick)

    def __contains__(self, tick_id: object) -> bool:
        return tick_id in self._by_tick

    def ids(self) -> set[str]:
        return set(self._by_tick)

    def ticks(self, cadence: str) -> list[str]:
        """The ticks whose sub-session of `cadence` is running."""
        return [tid for tid, r in self._by_tick.items() if r.claim.tick.cadence == cadence]

    def fingerprints(self, cadence: str) -> dict[str, str]:
        """Payload fingerprint -> tick id of `cadence`'s running sub-sessions (for overlap coalescing)."""
        return {r.fingerprint: tid for tid, r in self._by_tick.items() if r.claim.tick.cadence == cadence}

    def count(self) -> int:
        """Live sub-sessions, counted from real processes too, so a leaked child still counts (fails closed)."""
        pids = {r.session.pid for r in self._by_tick.values()}
        if len(pids) >= self._max_live():
            return len(pids)  # at the cap already: no need to look further
        now = self._monotonic()
        if self._scanned_at is None or now - self._scanned_at >= SCAN_EVERY:
            try:
                self._leaked = set()
                for child in psutil.Process().children():
                    try:
                        if child.status() != psutil.STATUS_ZOMBIE and "--print" in child.cmdline():
                            self._leaked.add(child.pid)
                    except (psutil.NoSuchProcess, psutil.ZombieProcess):
                        continue
                self._scanned_at = now
            except psutil.Error:
                self._scanned_at = None
                return self._max_live()  # cannot tell: refuse
        return len(pids | self._leaked)

    def end_all(self, reason: str, *, grace: float) -> None:
        """End every run (SIGINT/SIGTERM with `grace`, or at once when it is 0); they settle as requeued."""
        for run in self._by_tick.values():
            if run.end_reason is None or grace == 0.0:
                run.end_reason = run.end_reason or reason
                if grace == 0.0:
                    run.session.kill()
                else:
                    run.session.stop(grace)
