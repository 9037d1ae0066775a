"""The breakers as `circuit-open.json` holds them: restored at start-up, saved on every change, and
reloaded when an operator edits the file (`maestro circuit reset/open`) while the daemon runs."""

from __future__ import annotations

from maestro_py.policy.breaker import Breakers, CircuitFile
from maestro_py.clock import Clock, iso
from maestro_py.bus.events import EventLog


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

    def sync(self) -> None:
        """Pick up an operator's edit of the file (the CLI writes it; the daemon re-reads it)."""
        if self.file.mtime() == self.file.written_mtime:
            return
        try:
            doc = self.file.load()
        except ValueError as exc:
            self.events.emit("circuit_file_invalid", level="error", error=str(exc), action="keeping current state")
            self.file.written_mtime = self.file.mtime()
            return
        self.breakers.load_doc(doc)
        self.file.written_mtime = self.file.mtime()
        self.events.emit("circuits_reloaded", open=sorted(self.breakers.open_circuits()))

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
