"""`consumer.json`: what the daemon is doing, rewritten atomically each loop, and how to read it back."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import atomic_write_json
from maestro_py.bus.owner import Owner
from maestro_py.clock import iso, parse_iso
from maestro_py.daemon.lock import holder
from maestro_py.paths import Folder, Layout
from maestro_py.redact import Redactor

if TYPE_CHECKING:  # only for the annotations: status is read by the CLI, which must stay light
    from maestro_py.daemon.live import LiveRuns
    from maestro_py.policy.budget import Governor

STATUS_EVERY = 0.25  # seconds between consumer.json rewrites while busy
HEARTBEAT_EVERY = 5.0  # seconds between rewrites of an unchanged consumer.json (the heartbeat)
COUNTERS = (
    "claimed", "inline", "escalated", "guard_skipped", "succeeded", "failed", "retries", "dlq",
    "quarantined", "requeued", "reaped", "spawn_failures", "timeouts", "io_errors", "skipped_emergency_stop",
)


# `maestro status` exit codes (the LSB init-script convention: 0 running, 3 not running, 4 unknown).
EX_HEALTHY = 0      # alive, and its heartbeat is fresh
EX_NOT_RUNNING = 3  # no daemon holds the root's lock
EX_STALE = 4        # a process holds the lock, but its heartbeat is too old (stopped, wedged) or missing


def stale_after(poll_ms: int) -> float:
    """Heartbeat age beyond which a daemon holding the lock is considered stuck: 3 × poll + 30 s."""
    return 3 * max(poll_ms / 1000, 1.0) + 30


def health(live: dict[str, Any], limit: float) -> tuple[int, str]:
    """(exit code, the daemon's state in words) from `liveness`, judged against the heartbeat `limit`."""
    age = live["heartbeat_age_s"]
    if not live["alive"] and not live.get("lock_pid"):
        return EX_NOT_RUNNING, "not running"
    if age is None:
        return EX_STALE, f"pid {live['pid']} holds the lock but has written no status yet"
    if age > limit:
        return EX_STALE, (f"STALE: pid {live['pid']} holds the lock but its heartbeat is {_ago(age)} old (limit "
                          f"{_ago(limit)}): stopped (SIGSTOP?) or stuck")
    if not live["alive"]:
        return EX_STALE, f"pid {live.get('lock_pid')} holds the lock but the status names pid {live['pid']}"
    return EX_HEALTHY, f"alive (pid {live['pid']}, heartbeat {_ago(age)} ago)"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def write_status(layout: Layout, doc: dict[str, Any], redactor: Redactor) -> None:
    """Replace consumer.json atomically (not fsynced: it is rewritten every loop, and only shows state)."""
    atomic_write_json(layout.consumer_file, redactor.data(doc), tmp_dir=layout.folder(Folder.TMP), durable=False)


def read_status(layout: Layout) -> dict[str, Any] | None:
    """The last status document, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads(layout.consumer_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def liveness(layout: Layout, doc: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """Is the daemon alive: the lock's holder, its pid and start time, and the heartbeat's age."""
    lock_pid = holder(layout.lock_file)
    out: dict[str, Any] = {"alive": False, "pid": None, "heartbeat_age_s": None, "lock_pid": lock_pid}
    if doc:
        out["pid"] = doc.get("pid")
        try:
            out["heartbeat_age_s"] = round((now - parse_iso(doc["heartbeat"])).total_seconds(), 3)
        except (KeyError, TypeError, ValueError):
            pass
        owner = Owner.parse(str(doc.get("owner", "")))
        out["alive"] = bool(owner and owner.is_alive() and lock_pid == owner.pid)
    elif lock_pid:
        out.update(alive=True, pid=lock_pid)
    return out


def new_counters() -> Counter[str]:
    """A counter with every known name present (so status always shows them, even at zero)."""
    return Counter({name: 0 for name in COUNTERS})


def status_doc(*, owner: Owner, root: Path, now: datetime, started_at: datetime, state: str, watching: bool,
               emergency: str | None, live: LiveRuns, queued: int, counters: Counter[str],
               budget: Governor, quota: dict[str, dict[str, Any]] | None = None,
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
