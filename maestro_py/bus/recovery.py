"""Recovery after a crash: claims whose owner is gone go back to `inbox/` (or finish the move their last record
began), and writers' leftovers under `tmp/` are swept. `Recovery` is a part of `Bus` (its mixin, as
`DeadLetters` and `OperatorMoves` are)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from maestro_py.bus.claim import CLAIM_SEP, Claim
from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import fsync_dir, scan_dir, sync_files, unlink_missing_ok
from maestro_py.bus.inbox import InboxIndex
from maestro_py.bus.owner import Owner
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.clock import Clock
from maestro_py.errors import TickInvalid
from maestro_py.paths import Folder, Layout


@dataclass(frozen=True)
class Stale:
    """A claim whose owner is gone: its tick, the dead owner's pid, and whether it is this process's own claim
    whose settling an I/O error cut short (then it goes back as it was, not as a reap)."""

    claim: Claim
    owner_pid: int | None
    interrupted: bool


class Recovery:
    """The reaper's side of the bus: a mixin of `Bus`, which provides what is declared here."""

    layout: Layout
    tmp: Path
    inbox: Path
    claimed: Path
    done: Path
    dlq: Path
    clock: Clock
    events: EventLog
    owner: Owner
    index: InboxIndex
    quarantine: Callable[..., Path | None]
    _record: Callable[..., None]
    _advance: Callable[..., None]

    def stale_claims(self, *, orphan_grace: float = 60.0, active: set[str] | None = None) -> list[Stale]:
        """Claims whose owner is gone, for the daemon to settle (`daemon.settle.reap`: the policy's verdict says
        where each goes). What needs no verdict is done here: a move its last record began is finished, a copy
        already published elsewhere is dropped, an unreadable or unexpected file is quarantined.

        With `active` (the ids this process is working on), this process's own other claims count as stale too:
        a disk error interrupted their settling, and they must not wait for a restart.
        """
        stale: list[Stale] = []
        now = self.clock.now()
        for entry in scan_dir(self.claimed):
            stem, sep, rest = entry.name[:-5].partition(CLAIM_SEP) if entry.name.endswith(".json") else ("", "", "")
            owner = Owner.parse(rest) if sep else None
            interrupted = owner == self.owner and active is not None and stem not in active
            if owner is not None and not interrupted:
                if owner == self.owner or owner.is_alive():
                    continue
            elif owner is None:  # our own interrupted claims have no other writer: no grace to wait out
                try:
                    age = now.timestamp() - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if age < orphan_grace:
                    continue  # an unknown writer may still be mid-move
            path = Path(entry.path)
            if not stem:
                self.quarantine(path, "unexpected file in claimed/")
                continue
            if self._settled_elsewhere(stem) or self._claimed_again(stem, path):
                unlink_missing_ok(path)  # the move had already published the next state; drop the stale copy
                continue
            try:
                tick, _ = read_tick_file(path, stem)
            except TickInvalid as exc:
                self.quarantine(path, f"stale claim unreadable: {exc}", original_name=f"{stem}.json")
                continue
            except FileNotFoundError:
                continue
            claim = Claim(tick, path)
            if not interrupted and tick.moving_to in (Folder.DONE.value, Folder.DLQ.value):
                self._finish_move(claim, Folder(tick.moving_to))
                continue
            stale.append(Stale(claim, None if interrupted or owner is None else owner.pid, interrupted))
        return stale

    def _finish_move(self, claim: Claim, to: Folder) -> None:
        """A claimed file whose last record settles it (done or dead-lettered) lost its owner between the append
        and the rename: make that move, durably. (A record sending it back to `inbox/` is reaped as usual: it
        may be an earlier attempt's, and a tick that keeps killing its daemon must count its reaps.)"""
        target = self.layout.folder(to) / claim.tick.filename
        sync_files([claim.where], [])
        os.rename(claim.where, target)
        fsync_dir(target.parent)
        self.events.emit("move_finished", level="warn", id=claim.tick.id, cadence=claim.tick.cadence, to=to.value)

    def _settled_elsewhere(self, stem: str) -> bool:
        """True if a whole later copy of the tick exists (now made durable); a torn one is removed.

        Two copies come from a move that writes a new file (an operator's cancel or release, a compaction)
        cut short before it dropped the claimed one, or from the previous bus version, whose group commit
        published done copies before its sync (after a power cut one may be empty or cut short). Only a copy
        that parses as this tick is trusted over the claimed one.
        """
        for folder in (self.done, self.dlq, self.inbox):
            later = folder / f"{stem}.json"
            if not os.path.lexists(later):
                continue
            try:
                read_tick_file(later, stem)
            except TickInvalid:
                if folder is self.done:  # only a group commit writes without a sync: a torn copy is ours
                    unlink_missing_ok(later)
                    fsync_dir(folder)
                    continue
                return True  # a bad copy elsewhere is not ours to judge: the claimed copy is still dropped
            except FileNotFoundError:
                continue
            sync_files([later], [folder])
            return True
        return False

    def _claimed_again(self, stem: str, path: Path) -> bool:
        """True if another claim of the same tick holds a copy at least as far along as `path`'s: a move that
        publishes a new file into `inbox/` (an operator's release or replay, a compaction) was cut short before it
        dropped its hold, and a daemon has claimed the published copy since. Requeueing the hold would run the
        tick twice."""
        prefix = f"{stem}{CLAIM_SEP}"
        others = [Path(e.path) for e in scan_dir(self.claimed)
                  if e.name.startswith(prefix) and e.name.endswith(".json") and e.path != str(path)]
        if not others:
            return False
        try:
            mine = len(read_tick_file(path, stem)[0].history)
        except (TickInvalid, FileNotFoundError):
            return True
        for other in others:
            try:
                if len(read_tick_file(other, stem)[0].history) >= mine:
                    return True
            except (TickInvalid, FileNotFoundError):
                continue
        return False

    def sweep_tmp(self, *, grace: float = 3600.0) -> int:
        """Remove leftovers of crashed writers from `tmp/` once older than `grace` seconds."""
        removed = 0
        cutoff = self.clock.now().timestamp() - grace
        for entry in scan_dir(self.tmp):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_mtime < cutoff and not stat.S_ISDIR(st.st_mode):
                unlink_missing_ok(Path(entry.path))
                removed += 1
        if removed:
            self.events.emit("tmp_swept", level="warn", removed=removed)
        return removed
