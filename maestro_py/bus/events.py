"""The event log: one JSON line per bus transition, appended whole, secrets masked."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from maestro_py.clock import Clock, SystemClock, iso
from maestro_py.paths import Layout
from maestro_py.redact import Redactor


HELD_MAX = 512  # events a `batched()` block holds before it writes them anyway


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
        self._open: tuple[Path, int] | None = None  # the day's file stays open between events
        self._day: tuple[float, float, Path] | None = None  # [start, end) of the local day, and its file
        # Called with each event, secrets masked, after it is written (stderr lines, alerts, metrics); the
        # file stays the source of truth, and a listener that raises is ignored.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._held: list[tuple[Path, bytes]] | None = None  # lines of a `batched()` block, written at its end
        self._torn: Path | None = None  # the file the last write may have left mid-line (others append whole lines)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Events emitted inside the block are written when it ends, in one `write()` per file (a group commit's
        claims and settles: one syscall, not two per tick). Listeners still hear each event as it happens."""
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            self._write_held(held)

    def flush(self) -> None:
        """Write what a `batched()` block holds now (before something that may block: a handler, a guard)."""
        if self._held:
            held, self._held = self._held, []
            self._write_held(held)

    def _write_held(self, held: list[tuple[Path, bytes]]) -> None:
        for path, lines in itertools.groupby(held, key=lambda h: h[0]):  # a batch across midnight: two runs
            self._write(path, b"".join(line for _, line in lines))

    def _write(self, path: Path, data: bytes) -> None:
        if self._torn == path:  # an earlier write stopped mid-line: end that line first, or this one would join it
            data = b"\n" + data
        try:
            short = os.write(self._fd(path), data) < len(data)  # a filling disk: a short write, then errors
        except OSError:
            short = True
            self.close()  # reopen next time (the folder may have been removed or remounted)
        self._torn = path if short else None
        if short:
            self.failures += 1

    def emit(self, stage: str, *, level: str = "info", id: str | None = None, cadence: str | None = None,
             **details: Any) -> None:
        """Append one event; never raises (an unwritable log must not stop the work)."""
        now = self.clock.now()
        event: dict[str, Any] = {"ts": iso(now), "level": level, "stage": stage, "id": id, "cadence": cadence}
        event.update(details)
        raw = json.dumps(event, ensure_ascii=False, default=str)
        text = self.redactor.text(raw)
        line = (text + "\n").encode()
        if self._held is not None:
            self._held.append((self._path(now), line))
            if len(self._held) >= HELD_MAX:
                self._write_held(self._held)
                self._held = []
        else:
            self._write(self._path(now), line)
        if self.listeners:
            # Nothing masked in the line means nothing to mask in the event (each secret is also looked for in its
            # JSON-escaped form, and a key never contains an escape), so the masked copy, dearer than the line
            # itself, is made only for events that need it.
            masked = event if text is raw or text == raw else self.redactor.data(event)
            for listener in self.listeners:
                try:
                    listener(masked)
                except Exception:  # noqa: BLE001 - a listener must not stop the work
                    pass

    def _path(self, now: datetime) -> Path:
        """Today's (local) log file; recomputed only when the day changes, as this runs for every event."""
        t = now.timestamp()
        if self._day is None or not self._day[0] <= t < self._day[1]:
            local = now.astimezone()
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            end = (start + timedelta(days=1, hours=2)).replace(hour=0)  # DST-safe next midnight
            self._day = (start.timestamp(), end.timestamp(), self.layout.event_log(local))
        return self._day[2]

    def _fd(self, path: Path) -> int:
        if self._open is not None and self._open[0] == path:
            return self._open[1]
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._open = (path, fd)
        return fd

    def __del__(self) -> None:
        self.close()

    def close(self, _close: Any = os.close) -> None:  # bound early: __del__ may run at interpreter exit
        """Close the open log file (the next event reopens it)."""
        if self._open is not None:
            try:
                _close(self._open[1])
            except OSError:
                pass
            self._open = None
