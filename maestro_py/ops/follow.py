"""Following one tick to its end (`maestro run-now --wait`): where it is now, whether it has ended, and what its run
said and cost. Read-only: the daemon moves the tick; this looks at its file, the ledger and the run's log.

A tick *ends* for a follower when it settles (`done/`, `dlq/`) or when an attempt fails and it goes back to
`inbox/` to wait (a retry time in the future, or a failure that was not the tick's, requeued without burning the
attempt: an auth halt, a usage limit…): the caller asked for a run now, and a retry in half an hour is not that.
A failed attempt retried at once is followed on; so is a requeue that is no failure (a drain, a reaped claim). A tick merged into an older one (`skipped_overlap`) ends by naming that one, to follow instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.bus.operator import STATES
from maestro_py.bus.store import Bus
from maestro_py.bus.tick import Tick
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.errors import TickInvalid
from maestro_py.ops import ticks
from maestro_py.paths import Folder, Layout
from maestro_py.session.ledger import Ledger
from maestro_py.session.metering import parse_result

SUCCESS = ("ok", "nothing_to_do")  # a run that did its work, or a guard that said there was none
RESULT_TAIL = 4 << 20  # bytes of a run's stdout read for its result (the CLI prints it last)


@dataclass
class Look:
    """The tick as found by one look: its state, and, if it has ended for the follower, how."""

    state: str                      # queued | running | done | dead_letter | gone
    tick: Tick | None = None
    ended: bool = False
    ok: bool = False
    outcome: str | None = None      # the history entry that ended it
    reason: str | None = None
    merged_into: str | None = None  # skipped_overlap: the tick that runs instead
    entry: dict[str, Any] = field(default_factory=dict)


def look(layout: Layout, tick_id: str, seen: int, now: datetime) -> Look:
    """Where `tick_id` is and whether it has ended since its first `seen` history entries."""
    bus = Bus(layout)
    for _ in range(ticks.LOOKS):
        found = bus.whereis(tick_id)
        if found is None:
            return Look("gone", ended=True, outcome="gone", reason="no folder holds it (pruned, or removed by hand)")
        folder, path = found
        try:
            tick, _ = read_tick_file(path, tick_id)
        except FileNotFoundError:
            continue  # moved on while we looked
        except TickInvalid as exc:
            return Look(STATES[folder], ended=True, outcome="unreadable", reason=str(exc))
        return _judge(folder, tick, path, seen, now)
    return Look("moving")


def _judge(folder: Folder, tick: Tick, path: Path, seen: int, now: datetime) -> Look:
    state = STATES[folder]
    last = tick.history[-1] if tick.history else {}
    outcome, reason = last.get("outcome"), last.get("reason")
    if folder is Folder.DONE:
        if outcome == "skipped_overlap":
            return Look(state, tick, True, False, outcome, reason, merged_into=last.get("merged_into"), entry=last)
        return Look(state, tick, True, outcome in SUCCESS, outcome, reason, entry=last)
    if folder is Folder.DLQ:
        return Look(state, tick, True, False, "dead_letter", tick.dlq_reason or reason,
                    entry=last)
    if folder is Folder.INBOX:
        failed = [h for h in tick.history[seen:] if str(h.get("outcome", "")).startswith("failed")]
        due = tick.not_before_dt
        # "failed" burnt an attempt and may retry at once; "failed_<class>" was requeued as it was, to wait.
        if failed and (failed[-1].get("outcome") != "failed" or (due is not None and due > now)):
            return Look(state, tick, True, False, failed[-1].get("outcome"), failed[-1].get("reason"),
                        entry=failed[-1])
    return Look(state, tick)


def result_of(layout: Layout, tick: Tick, entry: dict[str, Any]) -> dict[str, Any]:
    """What the tick's last run said and cost: the result text (from its stdout log), its ledger row's tokens and
    cost (None: not measured), and the run's exit, duration and log. Inline work has no ledger row or log: its
    handler's detail is the text."""
    attempt = entry.get("attempt")
    rows = [r for r in Ledger(layout.ledger_file).rows() if r.get("tick") == tick.id]
    row = next((r for r in reversed(rows) if r.get("attempt") == attempt), rows[-1] if rows else None)
    log = ticks.last_stdout_log(layout, tick, attempt if isinstance(attempt, int) else None)
    text = None
    if log is not None:
        try:
            with open(log, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - RESULT_TAIL))
                parsed = parse_result(fh.read())
            text = parsed.text if parsed is not None else None
        except OSError:
            text = None
    if text is None and entry.get("mode") in ("inline", "guarded"):
        text = entry.get("detail")
    return {"tick": tick.id, "cadence": tick.cadence, "attempt": attempt, "outcome": entry.get("outcome"),
            "text": text, "mode": entry.get("mode"),
            "tokens": row.get("total_tokens") if row else None, "cost_usd": row.get("cost_usd") if row else None,
            "charged_usd": row.get("charged_usd") if row else None, "metered": row.get("metered") if row else None,
            "per_model": row.get("per_model") if row else None, "exit_code": entry.get("exit_code"),
            "duration_ms": entry.get("duration_ms"), "log": str(log) if log else None}
