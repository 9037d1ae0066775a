"""Circuit breakers per cadence, and the global auth halt, as an explicit state machine.

    CLOSED --(threshold consecutive failures)--> OPEN
    OPEN --(open_until passes; `advance`, once per loop)--> HALF_OPEN
    HALF_OPEN --(exactly one probe spawn succeeds)--> CLOSED
    HALF_OPEN --(the probe fails)--> OPEN, for twice as long (capped)

`AUTH_HALT` is a reserved circuit (not a valid cadence name) that refuses every spawn until the
credentials change or an operator resets it. `Breakers` does no I/O; `CircuitFile` and
`PersistedCircuits` keep `circuit-open.json` in step with it, so a daemon restarted by launchd/systemd
keeps its breakers and an operator's `maestro circuit reset/open` reaches the running daemon.

`CLAUDE_MISSING` is another reserved circuit: it refuses every spawn until the `claude` binary changes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from maestro_py.bus.events import EventLog
from maestro_py.clock import Clock, iso, parse_iso
from maestro_py.bus.fsio import atomic_write_json

AUTH_HALT = "_auth"
QUOTA_HOLD = "_quota"  # the subscription's usage limit: open until its reset, then one probe
CLAUDE_MISSING = "_claude"  # the `claude` binary cannot be started: every spawn is refused until it can


class State(str, enum.Enum):
    """Breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Circuit:
    """One breaker's state."""

    name: str
    state: State = State.CLOSED
    failures: int = 0
    opened_at: datetime | None = None
    open_until: datetime | None = None   # None while OPEN: until reset (auth halt, manual without --for)
    open_seconds: float = 0.0
    last_error: str | None = None
    probe_in_flight: bool = False
    manual: bool = False
    credential: str | None = None        # auth halt: fingerprint of the credentials that failed

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "failures": self.failures,
            "opened_at": iso(self.opened_at) if self.opened_at else None,
            "open_until": iso(self.open_until) if self.open_until else None,
            "open_seconds": self.open_seconds, "last_error": self.last_error,
            "manual": self.manual, "credential": self.credential,
        }

    @classmethod
    def from_json(cls, name: str, doc: dict[str, Any]) -> "Circuit":
        return cls(
            name=name, state=State(doc.get("state", "open")), failures=int(doc.get("failures", 0)),
            opened_at=parse_iso(doc["opened_at"]) if doc.get("opened_at") else None,
            open_until=parse_iso(doc["open_until"]) if doc.get("open_until") else None,
            open_seconds=float(doc.get("open_seconds") or 0), last_error=doc.get("last_error"),
            manual=bool(doc.get("manual")), credential=doc.get("credential"),
        )


@dataclass
class Breakers:
    """All circuits; the daemon asks `refusal()` before a spawn and reports every outcome."""

    threshold: int = 3
    open_seconds: float = 1800.0
    max_open_seconds: float = 6 * 3600.0
    # The daemon's: (threshold, open_seconds, max_open_seconds) as the settings in force say, read at each failure
    tuning: Callable[[], tuple[int, float, float]] | None = None
    circuits: dict[str, Circuit] = field(default_factory=dict)

    # -- questions --------------------------------------------------------
    def refusal(self, cadence: str, now: datetime) -> Circuit | None:
        """The circuit that refuses a spawn for `cadence` now, or None if it may spawn."""
        halt = self.circuits.get(AUTH_HALT)
        if halt is not None and halt.state is State.OPEN:
            return halt
        missing = self.circuits.get(CLAUDE_MISSING)
        if missing is not None and missing.state is State.OPEN:
            return missing
        quota = self.circuits.get(QUOTA_HOLD)
        if quota is not None and (quota.state is State.OPEN or quota.probe_in_flight):
            return quota  # at the limit, or its one probe after the reset is still running
        circuit = self.circuits.get(cadence)
        if circuit is None or circuit.state is State.CLOSED:
            return None
        if circuit.state is State.HALF_OPEN and not circuit.probe_in_flight:
            return None
        return circuit

    def advance(self, now: datetime) -> list[str]:
        """OPEN -> HALF_OPEN for every circuit whose open period is over (one probe may go); their names."""
        due = [c for c in self.circuits.values()
               if c.state is State.OPEN and c.open_until is not None and now >= c.open_until]
        for circuit in due:
            self._change(circuit, State.HALF_OPEN)
        return [c.name for c in due]

    def open_circuits(self) -> dict[str, Circuit]:
        """Circuits that are not closed."""
        return {n: c for n, c in self.circuits.items() if c.state is not State.CLOSED}

    # -- events -----------------------------------------------------------
    def on_spawn(self, cadence: str) -> None:
        """A spawn was allowed: in HALF_OPEN it is the one probe (of its cadence, or of the quota hold)."""
        for circuit in (self.circuits.get(cadence), self.circuits.get(QUOTA_HOLD)):
            if circuit is not None and circuit.state is State.HALF_OPEN:
                circuit.probe_in_flight = True

    def hold_quota(self, now: datetime, until: datetime, reason: str) -> Circuit:
        """Stop all spawning until the usage limit resets at `until` (then one probe goes first)."""
        return self._halt(QUOTA_HOLD, now, reason, None, max(1.0, (until - now).total_seconds()))

    def lift_quota(self) -> bool:
        """A run after the reset was not refused: lift the half-open hold. True if it was lifted."""
        hold = self.circuits.get(QUOTA_HOLD)
        if hold is None or hold.state is not State.HALF_OPEN:
            return False
        del self.circuits[QUOTA_HOLD]
        return True

    def record_success(self, cadence: str) -> bool:
        """A run succeeded: the cadence's circuit closes. True if that changed anything worth saving."""
        circuit = self.circuits.pop(cadence, None)
        return circuit is not None and circuit.state is not State.CLOSED

    def record_failure(self, cadence: str, now: datetime, error: str) -> Circuit:
        """A run failed: count it; open (or re-open, doubled) when due."""
        circuit = self.circuits.setdefault(cadence, Circuit(cadence))
        circuit.last_error = error[:500]
        circuit.failures += 1
        threshold, open_seconds, max_open_seconds = self.figures()
        if circuit.state is State.HALF_OPEN:
            # The probe failed: open again for twice as long, up to the cap.
            self._open(circuit, now, min(max(circuit.open_seconds, open_seconds) * 2, max_open_seconds))
        elif circuit.state is State.CLOSED and circuit.failures >= threshold:
            self._open(circuit, now, open_seconds)
        return circuit

    def figures(self) -> tuple[int, float, float]:
        """(threshold, open_seconds, max_open_seconds) in force."""
        return self.tuning() if self.tuning is not None else (self.threshold, self.open_seconds, self.max_open_seconds)

    def halt_auth(self, now: datetime, error: str, credential: str) -> Circuit:
        """Stop all spawning until the credentials change (or a reset)."""
        return self._halt(AUTH_HALT, now, error, credential)

    def credentials_changed(self, credential: str) -> bool:
        """Lift the auth halt if the credentials differ from the ones that failed."""
        return self._lift_if_changed(AUTH_HALT, credential)

    def halt_claude(self, now: datetime, error: str, identity: str) -> Circuit:
        """Stop all spawning until the `claude` binary changes (`identity`: see `command.claude_identity`)."""
        return self._halt(CLAUDE_MISSING, now, error, identity)

    def claude_changed(self, identity: str) -> bool:
        """Lift the `claude` halt if a binary is found now and it is not the one that failed."""
        return bool(identity) and self._lift_if_changed(CLAUDE_MISSING, identity)

    def open_manually(self, cadence: str, now: datetime, seconds: float | None) -> Circuit:
        """An operator opens a circuit (for `seconds`, or until reset)."""
        circuit = self.circuits.setdefault(cadence, Circuit(cadence))
        circuit.manual = True
        circuit.last_error = "opened by operator"
        self._open(circuit, now, seconds)
        return circuit

    def reset(self, cadence: str | None = None) -> list[str]:
        """Close one circuit (or all, including the auth halt); returns the names closed."""
        names = list(self.circuits) if cadence is None else [cadence] if cadence in self.circuits else []
        for name in names:
            del self.circuits[name]
        return names

    # -- internals --------------------------------------------------------
    def _halt(self, name: str, now: datetime, error: str, key: str | None, seconds: float | None = None) -> Circuit:
        """Open the global circuit `name` (all spawning stops) for `seconds`, or until `key` changes or a reset."""
        halt = Circuit(name, failures=1, last_error=error[:500], credential=key)
        self._open(halt, now, seconds)
        self.circuits[name] = halt
        return halt

    def _lift_if_changed(self, name: str, key: str) -> bool:
        """Lift the global circuit `name` if it was set for another `key`; True if lifted."""
        halt = self.circuits.get(name)
        if halt is None or halt.credential == key:
            return False
        del self.circuits[name]
        return True

    def _open(self, circuit: Circuit, now: datetime, seconds: float | None) -> None:
        self._change(circuit, State.OPEN)
        circuit.opened_at = now
        circuit.open_seconds = seconds or 0.0
        circuit.open_until = now + timedelta(seconds=seconds) if seconds else None

    @staticmethod
    def _change(circuit: Circuit, state: State) -> None:
        # The single mutator of `state`: every transition passes here.
        circuit.state = state
        circuit.probe_in_flight = False

    # -- persistence ------------------------------------------------------
    def to_doc(self, now: datetime) -> dict[str, Any] | None:
        """The `circuit-open.json` document, or None when nothing is open."""
        open_ = self.open_circuits()
        if not open_:
            return None
        return {"generated": iso(now), "open": {name: c.to_json() for name, c in sorted(open_.items())}}

    def load_doc(self, doc: dict[str, Any] | None) -> None:
        """Replace the open circuits with those of a document (closed-but-counting ones are kept)."""
        counting = {n: c for n, c in self.circuits.items() if c.state is State.CLOSED}
        self.circuits = counting
        for name, entry in ((doc or {}).get("open") or {}).items():
            if isinstance(entry, dict):
                self.circuits[name] = Circuit.from_json(name, entry)


class CircuitFile:
    """`state/cadence-bus/circuit-open.json`: written atomically, removed when nothing is open."""

    def __init__(self, path: Path, tmp_dir: Path) -> None:
        self.path = path
        self.tmp_dir = tmp_dir
        self.written_mtime: float | None = None

    def load(self) -> dict[str, Any] | None:
        """The document, or None if absent; ValueError if it is not valid JSON."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("circuit-open.json is not a JSON object")
        return doc

    def save(self, doc: dict[str, Any] | None) -> None:
        """Write `doc`, or remove the file when it is None."""
        if doc is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        else:
            atomic_write_json(self.path, doc, tmp_dir=self.tmp_dir)
        self.written_mtime = self.mtime()

    def mtime(self) -> float | None:
        """The file's mtime (None when absent): lets the daemon notice an operator's edit."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None


class PersistedCircuits:
    """Keeps `breakers` and their file in step; every outcome goes to the event log."""

    def __init__(self, breakers: Breakers, file: CircuitFile, events: EventLog, clock: Clock) -> None:
        self.breakers = breakers
        self.file = file
        self.events = events
        self.clock = clock

    def restore(self, credential: str) -> None:
        """Breakers survive restarts: a crash-looping daemon must not get fresh ones each time."""
        try:
            self.breakers.load_doc(self.file.load())
        except (ValueError, KeyError, TypeError) as exc:
            self.events.emit("circuit_file_invalid", level="error", error=str(exc), action="starting with all closed")
        self.file.written_mtime = self.file.mtime()
        self.credentials_changed(credential, "credentials changed")
        for name, circuit in self.breakers.open_circuits().items():
            self.events.emit("circuit_restored", level="warn", cadence=name, state=circuit.state.value,
                             open_until=iso(circuit.open_until) if circuit.open_until else None)

    def sync(self) -> dict[str, Any] | None:
        """Pick up an operator's edit of the file (the CLI writes it; the daemon re-reads it); the document read,
        or None when nothing new was read."""
        if self.file.mtime() == self.file.written_mtime:
            return None
        try:
            doc = self.file.load()
        except ValueError as exc:
            self.events.emit("circuit_file_invalid", level="error", error=str(exc), action="keeping current state")
            self.file.written_mtime = self.file.mtime()
            return None
        self.breakers.load_doc(doc)
        self.file.written_mtime = self.file.mtime()
        self.events.emit("circuits_reloaded", open=sorted(self.breakers.open_circuits()))
        return doc

    def save(self) -> None:
        """Write the current state (an unwritable file is logged: the in-memory breakers still hold)."""
        try:
            self.file.save(self.breakers.to_doc(self.clock.now()))
        except OSError as exc:
            self.events.emit("circuit_write_failed", level="error", error=str(exc))

    def credentials_changed(self, credential: str, reason: str) -> None:
        """New credentials lift an auth halt set under the old ones."""
        if self.breakers.credentials_changed(credential):
            self.events.emit("auth_halt_lifted", level="warn", reason=reason)
            self.save()
