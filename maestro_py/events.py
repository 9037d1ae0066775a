"""The event log: one JSON line per bus transition, appended whole, secrets masked."""

from __future__ import annotations

import json
import os
from typing import Any

from maestro_py.clock import Clock, SystemClock, iso
from maestro_py.paths import Layout
from maestro_py.redact import Redactor


class EventLog:
    """Appends events to `logs/cadence-bus/bus-YYYY-MM-DD.jsonl`.

    Each line is written with one `write()` on an `O_APPEND` descriptor, so lines from several writers
    (the daemon, `maestro enqueue` from cron) never interleave.
    """

    def __init__(self, layout: Layout, *, clock: Clock | None = None, redactor: Redactor | None = None) -> None:
        self.layout = layout
        self.clock = clock or SystemClock()
        self.redactor = redactor or Redactor()
        self.failures = 0  # appends that failed (disk full…); the daemon keeps running

    def emit(self, stage: str, *, level: str = "info", id: str | None = None, cadence: str | None = None,
             **details: Any) -> dict[str, Any]:
        """Append one event; never raises (an unwritable log must not stop the work)."""
        now = self.clock.now()
        event: dict[str, Any] = {"ts": iso(now), "level": level, "stage": stage, "id": id, "cadence": cadence}
        event.update(details)
        event = self.redactor.data(event)
        line = (json.dumps(event, ensure_ascii=False, default=str) + "\n").encode()
        path = self.layout.event_log(now.astimezone())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            self.failures += 1
        return event
