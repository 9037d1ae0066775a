"""Would a run of a cadence be held now, and by which gate? The daemon's own gate chain (`policy.gates.GATES`)
walked over what the daemon persisted, read-only: the `STOP` file, `circuit-open.json`, the ledger, a live
daemon's status file (its live runs, reservations, backoff and whether its credentials are proven), and the
governor store (asked what it would answer, nothing reserved). `maestro dry-run`, `run-now`, `tick show`,
`cadences`, `inbox list`, `doctor`, `budget`, the status page and `/v1/ticks/ID` explain a wait with it.

With no daemon running, the state is what a daemon starting now would have: no live runs, no backoff (a failed
tick's own retry time still holds it: `inbox list` shows that), unproven credentials. `claude` is looked for as
a spawn would look for it (the daemon learns that only by spawning, then halts every spawn).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from maestro_py.clock import parse_iso
from maestro_py.config import Settings
from maestro_py.errors import SpawnError
from maestro_py.ops import views
from maestro_py.paths import Layout, agent_name
from maestro_py.policy.breaker import QUOTA_HOLD, State
from maestro_py.policy.budget import Estimate
from maestro_py.policy.emergency import read_stop_file
from maestro_py.policy.gates import Answer, FleetAnswer, Hold, first_hold, refused_by, walk
from maestro_py.registry import Cadence, Registry
from maestro_py.registry_keys import Mode
from maestro_py.policy.denials import Denials, Streak
from maestro_py.session import command, sandbox
from maestro_py.session.ledger import Ledger
from maestro_py.session.sandbox import Sandbox
from maestro_py.state import observe

__all__ = ["Answer", "PersistedState", "evaluate", "hold_of", "holds", "queued_hold", "refused_by", "walk"]

_UNSET: Any = object()


class PersistedState:
    """The gates' view of what the daemon persisted (`policy.gates.GateState`). Read once, asked for many cadences;
    used as a context manager, it lets go of the governor store at the end (`close`)."""

    spawned_this_step = False  # pacing is within one loop: never a wait a view can see

    def __init__(self, layout: Layout, env: Mapping[str, str], settings: Settings, registry: Registry,
                 now: datetime) -> None:
        self.layout = layout
        self.env = env
        self.settings = settings
        seen = observe(layout, now)
        self.daemon = seen.doc if seen.running else None
        daemon = self.daemon or {}
        self._live: list[dict[str, Any]] = list(daemon.get("live_subsessions") or [])
        memory = daemon.get("gates") or {}
        self.credentials_verified = bool(memory.get("credentials_verified"))
        self._backoff = {str(name): parse_iso(at) for name, at in (memory.get("backoff") or {}).items()}
        self.emergency = read_stop_file(layout.stop_file)
        self.breakers, _ = views.load_breakers(layout)
        self.breakers.advance(now)  # as the daemon's next loop sees them: an open period that is over is half-open
        for name, circuit in self.breakers.circuits.items():
            if circuit.state is State.HALF_OPEN:  # its one probe runs now if a run it covers is live
                circuit.probe_in_flight = bool(self._live if name == QUOTA_HOLD else self.live_ticks(name))
        self.max_live = settings.max_live
        self.budget = views.budget_of(layout, settings, registry, self.daemon, now)
        self._claude: str | None = _UNSET
        self._fleet: dict[str, FleetAnswer] = {}
        self._store: Any = None
        self._denials: Denials | None = None

    def claude_problem(self) -> str | None:
        if self._claude is _UNSET:
            try:
                command.resolve_claude(self.env)
                self._claude = None
            except SpawnError as exc:
                self._claude = str(exc)
        return self._claude

    def sandbox(self) -> Sandbox:
        return sandbox.available(self.env)

    def denied(self, cadence: Cadence) -> Streak | None:
        if self._denials is None:  # the daemon's streaks, learned the same way from the same rows
            self._denials = Denials().seed(Ledger(self.layout.ledger_file).rows())
        return self._denials.holding(cadence.name, command.policy_id(cadence, self.env, self.layout.root))

    def backoff_until(self, cadence: str, now: datetime) -> datetime | None:
        at = self._backoff.get(cadence)
        return at if at is not None and at > now else None

    def live_count(self) -> int:
        return len(self._live)

    def live_ticks(self, cadence: str) -> list[str]:
        return [str(run.get("tick")) for run in self._live if run.get("cadence") == cadence]

    def fleet(self, cadence: Cadence, estimate: Estimate, now: datetime) -> FleetAnswer | None:
        """What the governor store would answer for one run of `cadence` (asked once per cadence; nothing held)."""
        if self.settings.governor_url is None:
            return None
        if cadence.name not in self._fleet:
            from maestro_py.fleet import open_store
            from maestro_py.fleet.model import Admission, Lease, StoreUnavailable

            agent = self.settings.agent or agent_name(self.layout.root.name)
            lease = Lease("view", agent, cadence.name, socket.gethostname(), os.getpid(), "view",
                          float(estimate.tokens), float(estimate.usd))
            try:
                if self._store is None:
                    self._store = open_store(self.settings.governor_url)
                answer: FleetAnswer = self._store.would_admit(lease, now, max_live=self.settings.fleet_max_live)
            except StoreUnavailable as exc:
                answer = Admission(False, "unavailable", str(exc))
            self._fleet[cadence.name] = answer
        return self._fleet[cadence.name]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "PersistedState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate(layout: Layout, env: Mapping[str, str], settings: Settings, registry: Registry, cadence: Cadence,
             now: datetime) -> list[Answer]:
    """Every gate's answer for a run of `cadence` now, in the daemon's order (inline cadences pass none)."""
    with PersistedState(layout, env, settings, registry, now) as state:
        return walk(state, cadence, now)


def hold_of(state: PersistedState, cadence: Cadence | None, now: datetime) -> Hold | None:
    """The gate that holds a run of `cadence` now (None: none does, or inline work, which no gate holds)."""
    if cadence is None or cadence.mode == Mode.INLINE:
        return None
    return first_hold(state, cadence, now)


def holds(state: PersistedState, registry: Registry, now: datetime) -> dict[str, Hold]:
    """Each cadence of `registry` whose runs a gate holds now, with that gate's hold, in the registry's order."""
    out = {}
    for name in registry.names():
        hold = hold_of(state, registry.get(name), now)
        if hold is not None:
            out[name] = hold
    return out


def queued_hold(layout: Layout, env: Mapping[str, str], settings: Settings, registry: Registry, cadence: str,
                not_before: str | None, now: datetime) -> Hold | None:
    """For one queued tick of `cadence` that is due (its `not_before` passed or unset): the gate that holds it now.
    None when it waits for its own time, runs at the daemon's next loop, or `circuit-open.json` cannot be read
    (`maestro doctor` says so)."""
    if not_before and parse_iso(not_before) > now:
        return None
    try:
        with PersistedState(layout, env, settings, registry, now) as state:
            return hold_of(state, registry.get(cadence), now)
    except views.CircuitFileInvalid:
        return None
