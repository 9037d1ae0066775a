"""`consumer.json`: what the daemon is doing, rewritten atomically each loop (`maestro_py.state` reads it back)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import atomic_write_json
from maestro_py.bus.owner import Owner
from maestro_py.clock import iso
from maestro_py.paths import Folder, Layout
from maestro_py.redact import Redactor

if TYPE_CHECKING:  # only for the annotations
    from maestro_py.daemon.live import LiveRuns
    from maestro_py.policy.budget import Budget

STATUS_EVERY = 0.25  # seconds between consumer.json rewrites while busy
HEARTBEAT_EVERY = 5.0  # seconds between rewrites of an unchanged consumer.json (the heartbeat)
COUNTERS = (
    "claimed", "inline", "escalated", "guard_skipped", "succeeded", "failed", "retries", "dlq",
    "quarantined", "requeued", "reaped", "killed", "spawn_failures", "timeouts", "io_errors", "skipped_emergency_stop",
)


def write_status(layout: Layout, doc: dict[str, Any], redactor: Redactor) -> None:
    """Replace consumer.json atomically (not fsynced: it is rewritten every loop, and only shows state)."""
    atomic_write_json(layout.consumer_file, redactor.data(doc), tmp_dir=layout.folder(Folder.TMP), durable=False)


def new_counters() -> Counter[str]:
    """A counter with every known name present (so status always shows them, even at zero)."""
    return Counter({name: 0 for name in COUNTERS})


def status_doc(*, owner: Owner, root: Path, now: datetime, started_at: datetime, state: str, watching: bool,
               emergency: str | None, live: LiveRuns, queued: int, counters: Counter[str],
               budget: Budget, quota: dict[str, dict[str, Any]] | None = None,
               governor: dict[str, Any] | None = None, settings: dict[str, Any] | None = None,
               restart_required: list[str] | None = None, gates: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `consumer.json` document (its schema, in one place)."""
    return {
        "pid": owner.pid,
        "owner": owner.token,
        "root": str(root),
        "state": state,
        "started_at": iso(started_at),
        "heartbeat": iso(now),
        "watchdog": watching,
        "emergency_stop": emergency,
        "live_subsessions": [
            {"pid": r.session.pid, "tick": tid, "cadence": r.claim.tick.cadence, "attempt": r.claim.attempt,
             "started": iso(r.started_at), "stdout_log": r.stdout_log}
            for tid, r in live.items()
        ],
        "queued": queued,
        "counters": dict(counters),
        "budget": budget.summary(now),
        "quota": quota or {},  # the subscription's usage windows, as the last run reported them
        "governor": governor,
        "settings": settings or {},  # the settings in force (`.env` edits apply live: daemon/reconfigure.py)
        "restart_required": restart_required or [],  # changed in .env, applied at the next start  # the fleet governor store, when one is configured (None: per-root budget only)
        "gates": gates or {},  # what the gates read from the daemon's memory (`Guardrails.memory`)
        "reservations": [{"tick": tid, "cadence": cad, "tokens": est.tokens, "usd": est.usd, "basis": est.basis}
                         for tid, (cad, est) in budget.reservations.items()],
    }


class StatusWriter:
    """Writes `consumer.json` while busy at most every STATUS_EVERY seconds; an unchanged one only as the
    heartbeat, every HEARTBEAT_EVERY seconds, so an idle daemon costs nothing measurable."""

    def __init__(self, layout: Layout, redactor: Redactor, events: EventLog, monotonic: Callable[[], float]) -> None:
        self.layout = layout
        self.redactor = redactor
        self.events = events
        self._monotonic = monotonic
        self._last_status = 0.0
        self._last_doc: dict[str, Any] | None = None
        self._last_written = 0.0

    def due(self, *, force: bool = False) -> bool:
        """True if a status should be built now (always when forced)."""
        now = self._monotonic()
        if not force and now - self._last_status < STATUS_EVERY:
            return False
        self._last_status = now
        return True

    def write(self, doc: dict[str, Any]) -> None:
        """Write `doc` unless only its heartbeat changed and the heartbeat is still fresh."""
        now = self._monotonic()
        content = {k: v for k, v in doc.items() if k != "heartbeat"}
        if content == self._last_doc and now - self._last_written < HEARTBEAT_EVERY:
            return
        try:
            write_status(self.layout, doc, self.redactor)
            self._last_doc, self._last_written = content, now
        except OSError as exc:
            self.events.emit("status_write_failed", level="error", error=str(exc))
