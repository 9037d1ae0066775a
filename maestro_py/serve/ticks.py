"""`GET /v1/ticks/{id}`: where a tick is now, its attempts and its history, read from the bus folders."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.bus.fsio import scan_dir
from maestro_py.bus.store import CLAIM_SEP
from maestro_py.bus.tick import TICK_ID_RE
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.config import Settings
from maestro_py.errors import TickInvalid
from maestro_py.paths import Folder, Layout
from maestro_py.registry import Registry
from maestro_py.serve.http import HttpError

# A move publishes the next copy before it drops the old one, so a later state is looked for first.
ORDER = (Folder.DONE, Folder.DLQ, Folder.INBOX, Folder.CLAIMED)
STATES = {Folder.INBOX: "queued", Folder.CLAIMED: "running", Folder.DONE: "done", Folder.DLQ: "dead_letter"}
LOOKS = 3  # a tick that moved between two folders while we looked is looked for again


def find_tick(layout: Layout, tick_id: str) -> dict[str, Any] | None:
    """The tick's folder, state, attempts, history and payload; None if no folder holds it (or it was pruned)."""
    if not TICK_ID_RE.match(tick_id):
        raise HttpError(400, "not a tick id")
    for _ in range(LOOKS):
        moved = False
        for folder in ORDER:
            path = _locate(layout, folder, tick_id)
            if path is None:
                continue
            try:
                tick, _ = read_tick_file(path, tick_id)
            except FileNotFoundError:
                moved = True
                break
            except TickInvalid as exc:
                return {"id": tick_id, "folder": folder.value, "state": STATES[folder], "readable": False,
                        "error": str(exc)}
            doc: dict[str, Any] = {"id": tick.id, "folder": folder.value, "state": STATES[folder],
                                   "cadence": tick.cadence, "source": tick.source, "enqueued_at": tick.enqueued_at,
                                   "attempts": tick.attempts, "not_before": tick.not_before,
                                   "payload": tick.payload, "history": tick.history}
            if folder is Folder.DLQ:
                doc.update(dlq_reason=tick.dlq_reason, dlq_at=tick.dlq_at)
            return doc
        if not moved:
            return None
    return None


def held_by(layout: Layout, env: Mapping[str, str], settings: Settings, registry: Registry,
            doc: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """For a queued tick that is due: the gate that holds it now, as the daemon's chain answers (`ops.gates`)."""
    from maestro_py.ops import gates

    hold = gates.queued_hold(layout, env, settings, registry, str(doc.get("cadence")), doc.get("not_before"), now)
    return hold.to_json() if hold is not None else None


def _locate(layout: Layout, folder: Folder, tick_id: str) -> Path | None:
    base = layout.folder(folder)
    if folder is Folder.CLAIMED:  # claimed/<id>@<owner>.json
        prefix = f"{tick_id}{CLAIM_SEP}"
        for entry in scan_dir(base):
            if entry.name.startswith(prefix) and entry.name.endswith(".json"):
                return Path(entry.path)
        return None
    path = base / f"{tick_id}.json"
    return path if os.path.lexists(path) else None
