"""A trigger that could not deliver its tick, recorded where the running daemon finds it and alerts.

`maestro enqueue` exiting non-zero (a full inbox, an unknown cadence, a bad payload or setting, an unreadable
`.env` …) and, under systemd, a timer's unit that failed otherwise (its `OnFailure=` handler, `maestro notify
trigger-failed`: killed, say) record the failure twice: a `trigger_failed` event in the root's event log (what
`maestro logs` shows; one line, masked, never the payload) and one small file in `state/cadence-bus/
trigger-failures/`, which the running daemon takes once a second and turns into an alert (daemon/housekeeping.py).

Why a file as well: an `EventLog` listener hears the events of its own process only, and making the daemon tail
the log it writes thousands of lines to, to find the few another process wrote, would cost it on every pass and
break at each day's new file. A file is taken once and removed, waits while the daemon is down (alerted when it
starts) and is bounded: past MAX_PENDING waiting, a failure is in the log only. Recording never raises: the
trigger's own error is what its caller must see.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import atomic_write, scan_dir
from maestro_py.bus.logview import tail_lines
from maestro_py.clock import Clock, SystemClock, iso, parse_iso
from maestro_py.paths import Folder, Layout
from maestro_py.redact import Redactor

MAX_PENDING = 100        # failure files waiting for a daemon; past it a failure is in the event log only
REASON_MAX = 500         # characters of the reason kept (one line)
MAX_FILE_BYTES = 16384   # a failure file larger than this is not one of ours: removed unread
SAME_FAILURE = 120.0     # without systemd's invocation id: a record of the cadence this recent is the same failure
_SEQ = itertools.count()  # this process's failure files, in order (their names sort by time, then this)


def record(layout: Layout, *, cadence: str | None, reason: str, exit_code: int | None, source: str | None,
           unit: str | None = None, invocation: str | None = None, alert: bool = True,
           redactor: Redactor | None = None, clock: Clock | None = None) -> bool:
    """Record one failed trigger: the event, and (`alert`) the file the daemon alerts from. Only in an agent root
    (a typo in `--root` gets no folders made for it); False if nothing could be written. Never raises."""
    try:
        layout.check_agent_root()
    except Exception:  # noqa: BLE001 - not an agent root, or not readable: nowhere to record it
        return False
    redactor = redactor or Redactor()
    clock = clock or SystemClock()
    doc = {"at": iso(clock.now()), "cadence": cadence, "reason": _one_line(reason), "exit_code": exit_code,
           "source": source, "unit": unit, "invocation": invocation, "pid": os.getpid()}
    try:
        events = EventLog(layout, clock=clock, redactor=redactor)
        details = {k: v for k, v in doc.items() if k not in ("at", "cadence") and v is not None}
        events.emit("trigger_failed", level="error", cadence=cadence, alerted=alert, **details)
        events.close()
        dropped = alert and _drop(layout, redactor.data(doc))
        return events.failures == 0 or dropped
    except Exception:  # noqa: BLE001 - a full disk, a read-only root: the caller's error still goes out
        return False


def _drop(layout: Layout, doc: dict[str, Any]) -> bool:
    folder, tmp = layout.trigger_failures_dir, layout.folder(Folder.TMP)  # a writer's leftover in tmp/ is swept
    for path in (folder, tmp):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sum(1 for entry in scan_dir(folder) if entry.name.endswith(".json")) >= MAX_PENDING:
        return False
    # Named by the time in ns, then this process's count: taken in the order they happened (`at` is in ms).
    name = f"{time.time_ns():020d}-{os.getpid()}-{next(_SEQ):06d}-{uuid.uuid4().hex[:6]}.json"
    atomic_write(folder / name, (json.dumps(doc, ensure_ascii=False) + "\n").encode(), tmp_dir=tmp)
    return True


def take(layout: Layout, limit: int = MAX_PENDING) -> list[dict[str, Any]]:
    """The recorded failures waiting for the daemon, oldest first, removed as they are read (at most `limit`).
    Never raises: a folder that cannot be listed has nothing to give (its alerts are a courtesy to the loop's work,
    never a reason to interrupt it)."""
    try:
        entries = sorted((e for e in scan_dir(layout.trigger_failures_dir) if e.name.endswith(".json")),
                         key=lambda e: e.name)
    except OSError:
        return []
    out: list[dict[str, Any]] = []
    for entry in entries[:limit]:
        try:
            with open(entry.path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
            os.unlink(entry.path)
        except OSError:
            continue
        try:
            doc = json.loads(data) if len(data) <= MAX_FILE_BYTES else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            out.append(doc)
    return out


def recorded(layout: Layout, *, cadence: str, invocation: str | None, now: datetime) -> bool:
    """True if `maestro enqueue` already recorded this failure: the same systemd invocation, or, when systemd does
    not say which (an older systemd), a failure of the cadence within SAME_FAILURE seconds. Reads the tail of today's
    (and yesterday's) event log only."""
    since = now - timedelta(seconds=SAME_FAILURE)
    for day in sorted({since.astimezone().date(), now.astimezone().date()}):
        for line in tail_lines(layout.event_log(datetime.combine(day, datetime.min.time()))):
            if '"trigger_failed"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or event.get("stage") != "trigger_failed":
                continue
            if invocation:
                if event.get("invocation") == invocation:
                    return True
            elif event.get("cadence") == cadence and _since(event, since):
                return True
    return False


def _since(event: dict[str, Any], since: datetime) -> bool:
    try:
        return parse_iso(str(event.get("ts"))) >= since
    except ValueError:
        return False


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= REASON_MAX else line[:REASON_MAX - 1] + "…"
