"""Requests to end one running sub-session (`maestro tick kill`, `POST /v1/ticks/ID/kill`): a file per tick in
`state/cadence-bus/kill/`, which the daemon reads at its next loop (`take`), acts on and removes. The request says
whether the tick goes back to `inbox/` (`requeue`, its attempt not burnt) or is settled in `done/` as "killed".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maestro_py.bus.fsio import atomic_write_json, scan_dir, unlink_missing_ok
from maestro_py.bus.tick import TICK_ID_RE
from maestro_py.clock import iso
from maestro_py.paths import Folder, Layout

MAX_REASON = 500
MAX_PENDING = 100  # read per loop: a flood of requests cannot stall the daemon


@dataclass(frozen=True)
class Kill:
    """One request: which tick, whether it is requeued, why, and when it was asked."""

    tick: str
    requeue: bool
    reason: str
    at: str

    def words(self) -> str:
        return f"killed by the operator: {self.reason}" if self.reason else "killed by the operator"

    def to_json(self) -> dict[str, Any]:
        return {"tick": self.tick, "requeue": self.requeue, "reason": self.reason, "at": self.at}


def request(layout: Layout, tick_id: str, *, requeue: bool, reason: str | None, now: datetime) -> Kill:
    """Leave a request for the daemon (atomically; asking twice replaces the first)."""
    kill = Kill(tick_id, requeue, " ".join((reason or "").split())[:MAX_REASON], iso(now))
    layout.kill_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_json(layout.kill_dir / f"{tick_id}.json", kill.to_json(), tmp_dir=layout.folder(Folder.TMP))
    return kill


def take(layout: Layout) -> list[Kill]:
    """The pending requests, each removed as it is read (a malformed one is dropped)."""
    out = []
    for entry in [e for e in scan_dir(layout.kill_dir) if e.name.endswith(".json")][:MAX_PENDING]:
        path = layout.kill_dir / entry.name
        stem = entry.name.removesuffix(".json")
        try:
            with open(path, "rb") as fh:
                doc = json.loads(fh.read(4096))
        except (OSError, ValueError):
            doc = None
        unlink_missing_ok(path)
        if isinstance(doc, dict) and TICK_ID_RE.match(stem) and doc.get("tick") == stem:
            out.append(Kill(stem, bool(doc.get("requeue")), str(doc.get("reason") or "")[:MAX_REASON],
                            str(doc.get("at") or "")))
    return out
