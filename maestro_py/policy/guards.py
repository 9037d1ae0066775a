"""What each finished run teaches the guards that stop a failing cadence from burning money: the global
auth halt, the per-cadence backoff and the circuit breaker (their refusals are in `gates.py`)."""

from __future__ import annotations

from datetime import datetime

from maestro_py.policy.backoff import Backoff, schedule
from maestro_py.policy.breaker import Breakers, State
from maestro_py.policy.circuits import PersistedCircuits
from maestro_py.clock import Clock, iso
from maestro_py.bus.events import EventLog
from maestro_py.policy.gates import Gates
from maestro_py.policy.failures import HANDLING, FailureClass
from maestro_py.registry import Cadence
from maestro_py.bus.tick import Tick

AUTH_FIX = ("replace the key in .env, or set MAESTRO_PREFER_SUBSCRIPTION_AUTH=1; "
            "then `maestro circuit reset --all` (or just edit .env)")


class Guards:
    """Records run outcomes into the breakers, backoff and auth halt, saving and logging what changes."""

    def __init__(self, breakers: Breakers, backoff: Backoff, gates: Gates, circuits: PersistedCircuits,
                 events: EventLog, clock: Clock) -> None:
        self.breakers = breakers
        self.backoff = backoff
        self.gates = gates
        self.circuits = circuits
        self.events = events
        self.clock = clock

    def succeeded(self, cadence: str) -> None:
        """A run succeeded: the credentials work, and the cadence's backoff and breaker reset."""
        self.gates.credentials_verified = True
        self.backoff.record_success(cadence)
        if self.breakers.record_success(cadence):
            self.events.emit("circuit_closed", cadence=cadence)
            self.circuits.save()

    def failed(self, tick: Tick, cadence: Cadence, cls: FailureClass, reason: str, credential: str) -> datetime | None:
        """A run failed with class `cls`; returns when the tick may be retried (None: at once)."""
        handling = HANDLING[cls]
        now = self.clock.now()
        if handling.halts_all:
            self.breakers.halt_auth(now, reason, credential)
            self.gates.credentials_verified = False
            self.circuits.save()
            self.events.emit("auth_halt", level="error", id=tick.id, cadence=tick.cadence, reason=reason,
                             fix=AUTH_FIX)
        if not handling.trips_breaker:
            return None
        wait = schedule(cadence.backoff_seconds) if cadence.backoff_seconds else None
        retry_at = self.backoff.record_failure(tick.cadence, now, wait)
        before = self.breakers.circuits.get(tick.cadence)
        was_open = before is not None and before.state is not State.CLOSED
        circuit = self.breakers.record_failure(tick.cadence, now, reason)
        if circuit.state is State.OPEN:
            retry_at = max(retry_at, circuit.open_until) if circuit.open_until else retry_at
            self.events.emit("circuit_opened" if not was_open else "circuit_reopened", level="error",
                             cadence=tick.cadence, failures=circuit.failures,
                             open_until=iso(circuit.open_until) if circuit.open_until else None, reason=reason)
            self.circuits.save()
        return retry_at
