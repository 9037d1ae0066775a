"""Ticks as an operator names and reads them: git-style ids, the queue, and one tick's whole story.

Every command that takes a tick id resolves it with `resolve`: the full id, a unique prefix (at least
MIN_PREFIX characters), or its last six characters, which the per-run log names carry
(`<date>-<cadence>-HHMMSS-a1-<last 6>.stdout.log`; the stamp or the whole file name work too). Nothing here
writes: moves are the bus's (`Bus.cancel`, `Bus.release`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.bus.dlq import REASON_SUFFIX
from maestro_py.bus.fsio import scan_dir
from maestro_py.bus.operator import STATES
from maestro_py.bus.store import Bus
from maestro_py.bus.tick import Tick
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.errors import MaestroError, TickInvalid
from maestro_py.paths import Folder, Layout
from maestro_py.policy.gates import Hold
from maestro_py.session.ledger import Ledger
from maestro_py.session.runlog import run_logs

MIN_PREFIX = 4
SUFFIX = 6  # what the per-run log names keep of an id (daemon/dispatch.py `_spawn`'s stamp)
SHOWN = 8   # candidates named in an "ambiguous" error
_LOG_STAMP = re.compile(r"(?:^|-)\d{6}-a\d+-([A-Za-z0-9._-]{6})(?:\.(?:stdout|stderr)\.log)?\Z")
LOOKS = 3   # a tick that moved between two folders while it was read is looked for again


class NoSuchTick(MaestroError):
    """No tick id matches what was given."""


class TickIdTooShort(MaestroError):
    """A prefix too short to name a tick (a usage error)."""


class AmbiguousTickId(MaestroError):
    """More than one tick id matches; `candidates` are those (with their state)."""

    def __init__(self, text: str, candidates: list[str]) -> None:
        shown = ", ".join(candidates[:SHOWN]) + (f" and {len(candidates) - SHOWN} more" if len(candidates) > SHOWN
                                                  else "")
        super().__init__(f"tick id {text!r} is ambiguous: {shown}")
        self.candidates = candidates


def resolve(text: str, ids: Mapping[str, str] | Iterable[str]) -> str:
    """The one id of `ids` that `text` names (see the module's docstring). NoSuchTick or AmbiguousTickId (which
    lists each candidate with its state, when `ids` maps id -> state)."""
    states = ids if isinstance(ids, Mapping) else dict.fromkeys(ids, "")
    text = text.strip()
    if text in states:
        return text
    name = os.path.basename(text)
    stamp = _LOG_STAMP.search(name)
    if stamp:
        found = [i for i in states if i.endswith(stamp[1])]
    elif name.endswith(".json") and name[:-5] in states:
        return name[:-5]
    elif len(text) < MIN_PREFIX:
        raise TickIdTooShort(f"tick id {text!r} is too short: give at least {MIN_PREFIX} characters "
                             f"(or the last {SUFFIX})")
    else:
        found = [i for i in states if i.startswith(text) or (len(text) >= SUFFIX and i.endswith(text))]
    found.sort()
    if not found:
        raise NoSuchTick(f"no tick matches {text!r}")
    if len(found) > 1:
        raise AmbiguousTickId(text, [f"{i} ({states[i]})" if states[i] else i for i in found])
    return found[0]


def dlq_names(layout: Layout) -> list[str]:
    """What `dlq show`/`replay` take: a dead-lettered tick's id, or a quarantined entry's file name."""
    out = []
    for entry in scan_dir(layout.folder(Folder.DLQ)):
        name = entry.name
        if name.endswith(REASON_SUFFIX):
            continue
        quarantined = os.path.lexists(layout.folder(Folder.DLQ) / f"{name}{REASON_SUFFIX}")
        out.append(name[:-5] if name.endswith(".json") and not quarantined else name)
    return sorted(out)


def queued(layout: Layout, now: datetime,
           held_by: Callable[[str], Hold | None] | None = None) -> list[dict[str, Any]]:
    """Every tick in `inbox/`, oldest first: id, cadence, attempts, source, enqueued_at, not_before (UTC ISO) and
    why it waits (`delayed` at enqueue, `retry` after a failure, else None). With `held_by` (cadence name -> the
    gate that holds its runs now, `ops.gates.hold_of`), a tick that is due carries that gate's hold as `held_by`
    (None: it runs at the daemon's next loop)."""
    holds: dict[str, Hold | None] = {}
    out = []
    folder = layout.folder(Folder.INBOX)
    for entry in sorted(scan_dir(folder), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            tick, _ = read_tick_file(entry.path, entry.name[:-5])
        except (TickInvalid, FileNotFoundError):
            continue  # being written, or the daemon will quarantine it
        due = tick.not_before_dt
        item = {"id": tick.id, "cadence": tick.cadence, "attempts": tick.attempts, "source": tick.source,
                "enqueued_at": tick.enqueued_at, "not_before": tick.not_before,
                "waiting": due is not None and due > now, "wait": wait_kind(tick)}
        if held_by is not None:
            if tick.cadence not in holds:
                holds[tick.cadence] = held_by(tick.cadence)
            hold = holds[tick.cadence]
            item["held_by"] = hold.to_json() if hold is not None and not item["waiting"] else None
        out.append(item)
    return out


def held_ticks(layout: Layout, cadence: str | None, now: datetime) -> list[str]:
    """Queued ticks of `cadence` (None: any) that wait for a retry time a failure set (the breaker or the backoff),
    still in the future: what a `circuit reset` releases."""
    out = []
    for entry in sorted(scan_dir(layout.folder(Folder.INBOX)), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            tick, _ = read_tick_file(entry.path, entry.name[:-5])
        except (TickInvalid, FileNotFoundError):
            continue
        due = tick.not_before_dt
        if (cadence is None or tick.cadence == cadence) and due is not None and due > now and held_by_failure(tick):
            out.append(tick.id)
    return out


def wait_kind(tick: Tick) -> str | None:
    """Why a queued tick has a `not_before`: "retry" (set by a failure: the breaker or the backoff), "delayed"
    (asked for at enqueue), or None."""
    if tick.not_before is None:
        return None
    return "retry" if held_by_failure(tick) else "delayed"


def held_by_failure(tick: Tick) -> bool:
    """True if the tick's `not_before` was set by a failed attempt (`Bus.fail` sets it to the retry time the
    backoff or the open breaker gives; nothing else writes it after an enqueue)."""
    return tick.not_before is not None and any(str(h.get("outcome", "")).startswith("failed") for h in tick.history)


def describe(layout: Layout, tick_id: str) -> dict[str, Any] | None:
    """One tick's whole story: where it is, its fields and history, its runs in the ledger and their log files.
    None if no folder holds it."""
    bus = Bus(layout)
    for _ in range(LOOKS):
        found = bus.whereis(tick_id)
        if found is None:
            return None
        folder, path = found
        try:
            tick, _ = read_tick_file(path, tick_id)
        except FileNotFoundError:
            continue  # it moved on while we looked
        except TickInvalid as exc:
            return {"id": tick_id, "folder": folder.value, "state": STATES[folder], "path": str(path),
                    "readable": False, "error": str(exc)}
        doc: dict[str, Any] = {"id": tick.id, "folder": folder.value, "state": STATES[folder], "path": str(path),
                               "readable": True, **{k: v for k, v in tick.to_json().items() if k != "id"}}
        if folder is Folder.CLAIMED:
            doc["claimed_by"] = path.name[:-5].partition("@")[2]
        doc["wait"] = wait_kind(tick) if folder is Folder.INBOX else None
        doc["runs"] = [row for row in Ledger(layout.ledger_file).rows() if row.get("tick") == tick.id]
        doc["logs"] = [str(p) for p in run_logs(layout, tick)]
        return doc
    return None


def last_stdout_log(layout: Layout, tick: Tick, attempt: int | None = None) -> Path | None:
    """The stdout log of the tick's last run (or of `attempt`)."""
    logs = [p for p in run_logs(layout, tick) if p.name.endswith(".stdout.log")
            and (attempt is None or f"-a{attempt}-" in p.name)]
    return logs[-1] if logs else None
