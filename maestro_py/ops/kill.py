"""Ending one running sub-session from another process (`maestro tick kill`, `POST /v1/ticks/ID/kill`): refuse
what is not a live run of the daemon that runs now, leave the request (`bus.kills`), and wait for its settle."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from maestro_py.bus import kills
from maestro_py.bus.operator import STATES
from maestro_py.bus.store import Bus
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.errors import TickInvalid
from maestro_py.paths import Folder, Layout
from maestro_py.state import observe

WAIT_SECONDS = 30.0  # a kill's SIGINT, SIGTERM and grace, then the settle: well within this


class NotRunning(Exception):
    """The tick is not a live sub-session of the running daemon (the message says where it is instead)."""


class Unknown(NotRunning):
    """No folder holds the tick."""


def ask(layout: Layout, tick_id: str, *, requeue: bool, reason: str | None, now: datetime) -> kills.Kill:
    """Leave a kill request for `tick_id`, or NotRunning (one line) when no live run of it can take one."""
    seen = observe(layout, now)
    found = Bus(layout).whereis(tick_id)
    if found is None:
        raise Unknown(f"{tick_id} is in no folder")
    if found[0] is not Folder.CLAIMED:
        raise NotRunning(f"{tick_id} is not running: it is {STATES[found[0]]} ({found[0].value}/)")
    live = [run for run in ((seen.doc or {}).get("live_subsessions") or []) if run.get("tick") == tick_id]
    if not seen.running or not live:
        raise NotRunning(f"{tick_id} is claimed but not a live sub-session of a running daemon (an inline handler or "
                         "guard, or a run being settled); nothing to kill")
    return kills.request(layout, tick_id, requeue=requeue, reason=reason, now=now)


def settled(layout: Layout, tick_id: str, *, timeout: float = WAIT_SECONDS,
            monotonic: Callable[[], float] = time.monotonic) -> tuple[Folder, str | None] | None:
    """Where the tick went once its run settled (its folder and last outcome), or None after `timeout` s."""
    bus = Bus(layout)
    deadline = monotonic() + timeout
    while True:
        found = bus.whereis(tick_id)
        if found is not None and found[0] is not Folder.CLAIMED:
            try:
                tick, _ = read_tick_file(found[1], tick_id)
                outcome = tick.history[-1].get("outcome") if tick.history else None
            except (TickInvalid, OSError):
                outcome = None
            return found[0], outcome
        if monotonic() >= deadline:
            return None
        time.sleep(0.05)
