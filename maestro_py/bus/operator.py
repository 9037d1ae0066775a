"""What an operator does to a queued tick: find it, cancel it, or release it from its wait (`tick retry-now`, a
`circuit reset`). `OperatorMoves` is a part of `Bus` (its mixin, as `DeadLetters` is), so these moves publish as
every other does: written under `tmp/`, fsynced, renamed or linked in, the folder fsynced.

A queued tick is first taken out of `inbox/` by one rename into `claimed/` under this process's name, exactly as a
claim takes it: a daemon claiming the same tick at the same moment wins or loses cleanly, never both, and a
crash half-way leaves a claim whose owner is gone, which the daemon's reaper puts back. A tick already claimed is
running and is never touched (`TickNotQueued`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from maestro_py.bus.claim import CLAIM_SEP, Claim
from maestro_py.bus.dlq import REASON_SUFFIX
from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import scan_dir, unlink_missing_ok
from maestro_py.bus.inbox import InboxIndex
from maestro_py.bus.owner import Owner
from maestro_py.bus.tick import TICK_ID_RE, Tick
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.errors import TickInvalid, TickNotQueued
from maestro_py.paths import Folder, Layout

# A move publishes the next copy before it drops the old one: a later state is looked for first.
LATER_FIRST = (Folder.DONE, Folder.DLQ, Folder.INBOX, Folder.CLAIMED)
STATES = {Folder.INBOX: "queued", Folder.CLAIMED: "running", Folder.DONE: "done", Folder.DLQ: "dead_letter"}


class OperatorMoves:
    """The operator's side of the bus: a mixin of `Bus`, which provides what is declared here."""

    layout: Layout
    inbox: Path
    claimed: Path
    done: Path
    dlq: Path
    owner: Owner
    events: EventLog
    index: InboxIndex
    _publish: Callable[..., None]
    _record: Callable[..., None]
    quarantine: Callable[..., Path | None]

    def tick_ids(self, folders: Iterable[Folder] = LATER_FIRST) -> dict[str, Folder]:
        """Every tick id in `folders` with the folder it is in (names only: no file is read)."""
        out: dict[str, Folder] = {}
        for folder in folders:
            for entry in scan_dir(self.layout.folder(folder)):
                name = entry.name
                if not name.endswith(".json") or name.endswith(REASON_SUFFIX):
                    continue
                stem = name[:-5].partition(CLAIM_SEP)[0] if folder is Folder.CLAIMED else name[:-5]
                if TICK_ID_RE.match(stem):
                    out.setdefault(stem, folder)
        return out

    def whereis(self, tick_id: str) -> tuple[Folder, Path] | None:
        """The folder holding `tick_id` and its file there (a later state first), or None."""
        if not TICK_ID_RE.match(tick_id):
            return None
        for folder in LATER_FIRST:
            if folder is Folder.CLAIMED:
                prefix = f"{tick_id}{CLAIM_SEP}"
                for entry in scan_dir(self.claimed):
                    if entry.name.startswith(prefix) and entry.name.endswith(".json"):
                        return folder, Path(entry.path)
                continue
            path = self.layout.folder(folder) / f"{tick_id}.json"
            if os.path.lexists(path):
                return folder, path
        return None

    def cancel(self, tick_id: str, *, by: str = "operator", reason: str | None = None) -> Tick:
        """inbox/ -> done/ with outcome "cancelled" and an audit entry: settled on purpose, not failed (dlq/ is the
        list of what needs a look, and `dlq replay --all` must not bring a cancelled tick back)."""
        claim = self._take(tick_id)
        tick = claim.tick
        why = reason or f"cancelled by {by}"
        with _put_back_on_error(claim, self.inbox / tick.filename):
            self._record(tick, tick.attempts, "cancelled", why, {"by": by, "not_before_was": tick.not_before})
            self._publish(tick, self.done / tick.filename, overwrite=True)
        unlink_missing_ok(claim.where)
        self.events.emit("done", id=tick.id, cadence=tick.cadence, outcome="cancelled", reason=why, by=by)
        return tick

    def release(self, tick_id: str, *, by: str = "operator", reason: str) -> Tick:
        """Clear a queued tick's `not_before` (it may run at the daemon's next loop), with an audit entry naming
        the wait it had."""
        claim = self._take(tick_id)
        tick = claim.tick
        was = tick.not_before
        with _put_back_on_error(claim, self.inbox / tick.filename):
            tick.not_before = None
            self._record(tick, tick.attempts, "released", reason, {"by": by, "not_before_was": was})
            self._publish(tick, self.inbox / tick.filename, overwrite=False)
        unlink_missing_ok(claim.where)
        self.index.add(tick)
        self.events.emit("released", id=tick.id, cadence=tick.cadence, reason=reason, by=by, not_before_was=was)
        return tick

    def _take(self, tick_id: str) -> Claim:
        """Hold a queued tick: one rename from `inbox/` to `claimed/` (as a claim), then read it.
        TickNotQueued, naming where it is, if it is not in `inbox/`."""
        if not TICK_ID_RE.match(tick_id):
            raise TickNotQueued(f"{tick_id!r} is not a tick id")
        name = f"{tick_id}.json"
        target = self.claimed / f"{tick_id}{CLAIM_SEP}{self.owner.token}.json"
        self.index.take(name)
        try:
            os.rename(self.inbox / name, target)
        except FileNotFoundError:
            found = self.whereis(tick_id)
            state = STATES[found[0]] if found else None
            raise TickNotQueued(f"tick {tick_id} is not queued" + (f" (it is {state.replace('_', ' ')})"
                                                                     if state else ": no such tick"), state) from None
        try:
            tick, _ = read_tick_file(target, tick_id)
        except TickInvalid as exc:
            self.quarantine(target, str(exc), original_name=name)
            raise
        return Claim(tick, target)


class _put_back_on_error:
    """If the move fails (a full disk), the held file goes back to `inbox/` as it was: nothing was rewritten yet."""

    def __init__(self, claim: Claim, home: Path) -> None:
        self.claim, self.home = claim, home

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if kind is not None and not os.path.lexists(self.home):
            try:
                os.rename(self.claim.where, self.home)
            except OSError:
                pass  # left in claimed/: the reaper returns it once this process is gone
        return False
