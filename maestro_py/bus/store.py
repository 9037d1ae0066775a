"""The filesystem tick bus: the one place that moves tick files between state folders (`DeadLetters`, its
`dlq/` side, lives in dlq.py; `OperatorMoves`, an operator's cancel and release of a queued tick, in
operator.py), and keeps its index of `inbox/` (inbox.py) in step with every move.

A tick's state *is* the folder it is in (see `paths.Folder`):

    tmp/ --deliver--> inbox/ --claim--> claimed/ --complete--> done/
                        ^                  |  \\--dead_letter--> dlq/
                        +----requeue/fail--+
                        +------reap--------+   (the claim's owner died)

Every transition that changes a tick's content writes the new content under `tmp/`, fsyncs it, publishes
it into the target folder, fsyncs that folder, then removes the old copy. A crash between the publish
and the removal leaves two copies; `reap_stale` keeps the further one, so a tick is never lost.

Inside `group_commit()` (the daemon's inline batches), `complete` publishes done copies without waiting
for the disk and keeps the claimed copies; leaving the block makes the whole group durable with one sync,
and only then drops the claimed copies. A crash before that sync can leave a torn done copy beside its
claimed copy: `reap_stale` checks the later copy parses before trusting it, and runs the tick again if not.

`Bus.index` is updated by the bus itself from the tick in memory whenever a tick enters `inbox/`
(deliver, retry, requeue, reap, replay) or leaves it (claim); files that arrive from elsewhere are found
by `index.refresh()` / `index.notice()`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from maestro_py.bus.claim import CLAIM_SEP, Claim
from maestro_py.bus.dlq import REASON_SUFFIX, DeadLetters
from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import flocked, fsync_dir, scan_dir, sync_files, unlink_missing_ok, write_tmp
from maestro_py.bus.inbox import InboxIndex, Seen
from maestro_py.bus.operator import OperatorMoves
from maestro_py.bus.owner import Owner
from maestro_py.bus.tick import Tick, encode, read_tick_file
from maestro_py.clock import Clock, SystemClock, iso
from maestro_py.errors import InboxFull, TickInvalid
from maestro_py.paths import Folder, Layout

ENQUEUE_LOCK = "enqueue.lock"  # serializes the backlog ceiling's count-and-deliver
MAX_DELAY_SECONDS = 366 * 86400


class Bus(DeadLetters, OperatorMoves):
    """Delivery, claiming and settling of ticks under one agent root, and the index of what is queued."""

    def __init__(self, layout: Layout, *, clock: Clock | None = None, events: EventLog | None = None,
                 owner: Owner | None = None, max_inbox: int = 1000, max_reaps: int = 3) -> None:
        self.layout = layout
        self.clock = clock or SystemClock()
        self.events = events or EventLog(layout, clock=self.clock)
        self.owner = owner or Owner.current()
        self.max_inbox = max_inbox
        self.max_reaps = max_reaps
        self.quarantined = 0  # bad entries moved to dlq/ by this process
        self.tmp = layout.folder(Folder.TMP)
        self.inbox = layout.folder(Folder.INBOX)
        self.claimed = layout.folder(Folder.CLAIMED)
        self.done = layout.folder(Folder.DONE)
        self.dlq = layout.folder(Folder.DLQ)
        self._group: list[tuple[Claim, Path, dict[str, Any]]] | None = None  # completions awaiting their sync
        self.index = InboxIndex(self.inbox, self.inspect, self.quarantine, clock=self.clock)

    def reindex(self) -> None:
        """Rebuild the index from the folder (after a step failed half-way through an update)."""
        self.index = InboxIndex(self.inbox, self.inspect, self.quarantine, clock=self.clock)

    # -- delivery ---------------------------------------------------------
    def enqueue(self, cadence: str, *, source: str = "cli", payload: dict[str, Any] | None = None,
                delay: float = 0.0) -> Tick:
        """Create and deliver a new tick, refusing when the inbox is at capacity (exactly, under concurrency)."""
        if not 0 <= delay <= MAX_DELAY_SECONDS:  # also NaN and infinity
            raise TickInvalid(f"delay must be between 0 and {MAX_DELAY_SECONDS} seconds (366 days)")
        now = self.clock.now()
        not_before = now + timedelta(seconds=delay) if delay > 0 else None
        tick = Tick.new(cadence, now=now, source=source, payload=payload, not_before=not_before)
        tick.record("enqueued", at=now, source=source)
        # Count-then-deliver under one lock: racing enqueues at the ceiling must not all see room for one.
        with flocked(self.layout.bus_dir / ENQUEUE_LOCK):
            depth = self.depth(Folder.INBOX, stop_at=self.max_inbox)  # a full check, not a full count
            if depth >= self.max_inbox:
                self.events.emit("enqueue_refused", level="warn", cadence=cadence, reason="inbox_full", depth=depth)
                raise InboxFull(depth, self.max_inbox)
            self.deliver(tick)
        return tick

    def deliver(self, tick: Tick) -> Path:
        """Publish a new tick into `inbox/`; never overwrites an existing file."""
        target = self.inbox / tick.filename
        self._publish(tick, target, overwrite=False)
        self.index.add(tick)
        self.events.emit("enqueued", id=tick.id, cadence=tick.cadence, source=tick.source,
                         not_before=tick.not_before)
        return target

    # -- claiming ---------------------------------------------------------
    def claim(self, name: str) -> Claim | None:
        """Take `inbox/<name>` by one atomic rename; None if another consumer won or the file is bad.

        If the index kept its parse of this file, the file is not read again while it is still the same
        version: a rename keeps the inode, and any rewrite changes the inode, size or mtime.
        """
        seen = self.index.take(name)
        stem = name[:-5] if name.endswith(".json") else name
        target = self.claimed / f"{stem}{CLAIM_SEP}{self.owner.token}.json"
        try:
            os.rename(self.inbox / name, target)
        except FileNotFoundError:
            return None  # lost the race, or it was never there
        try:
            if seen is not None and seen.matches(os.lstat(target)):
                tick = seen.tick
            else:
                tick, _ = read_tick_file(target, stem)
        except TickInvalid as exc:
            self.quarantine(target, str(exc), original_name=name)
            return None
        except FileNotFoundError:
            return None
        self.events.emit("claimed", id=tick.id, cadence=tick.cadence, attempt=tick.attempts + 1)
        return Claim(tick, target)

    # -- settling ---------------------------------------------------------
    def complete(self, claim: Claim, outcome: str = "ok", *, reason: str | None = None, **details: Any) -> None:
        """claimed/ -> done/ with a final history entry (durable now, or when the group commits)."""
        tick = claim.tick
        event = {"id": tick.id, "cadence": tick.cadence, "outcome": outcome, "reason": reason, **details}
        with _undo_on_error(tick):
            self._record(tick, claim.attempt, outcome, reason, details)
            target = self.done / tick.filename
            if self._group is not None:
                self._publish(tick, target, overwrite=True, durable=False)
                self._group.append((claim, target, event))
                return
            self._move(claim, target, overwrite=True)
        self.events.emit("done", **event)

    @contextmanager
    def group_commit(self) -> Iterator[None]:
        """Completions inside the block become durable together, with one sync when it ends.

        Until then each completed tick has both copies, the claimed one and an unsynced done one, so a
        crash leaves it for `reap_stale` to settle (the done copy if it is whole, else a rerun); the
        claimed copies are dropped, and the `done` events written, only after the sync.
        """
        if self._group is not None:  # already inside one: the outer block commits
            yield
            return
        self._group = []
        try:
            yield
        finally:
            group, self._group = self._group, None
            self._commit(group)

    def _commit(self, group: list[tuple[Claim, Path, dict[str, Any]]]) -> None:
        if not group:
            return
        sync_files([target for _, target, _ in group], [self.done])
        for claim, _, event in group:
            unlink_missing_ok(claim.path)
            self.events.emit("done", **event)

    def fail(self, claim: Claim, reason: str, *, max_attempts: int, retry_at: datetime | None = None,
             permanent: bool = False, outcome: str = "failed", **details: Any) -> str:
        """Burn an attempt: back to `inbox/` (not before `retry_at`), or `dlq/` when exhausted or permanent.

        Returns "retry" or "dlq".
        """
        tick = claim.tick
        with _undo_on_error(tick):  # a settle retried after an I/O error burns the attempt once
            tick.attempts += 1
            self._record(tick, tick.attempts, outcome, reason, details)
            if permanent or tick.attempts >= max_attempts:
                count = (f"{tick.attempts}/{max_attempts}" if tick.attempts <= max_attempts  # else the limit was lowered
                         else f"{tick.attempts}, and the limit is {max_attempts} now")
                why = reason if permanent else f"attempts exhausted ({count}): {reason}"
                self.dead_letter(claim, why, recorded=True)
                return "dlq"
            tick.not_before = iso(retry_at) if retry_at else None
            self._move(claim, self.inbox / tick.filename, overwrite=True)
        self.index.add(tick)
        self.events.emit("retry", level="warn", id=tick.id, cadence=tick.cadence, attempt=tick.attempts,
                         max_attempts=max_attempts, not_before=tick.not_before, reason=reason, **details)
        return "retry"

    def requeue(self, claim: Claim, reason: str, *, not_before: datetime | None = None, outcome: str = "requeued",
                **details: Any) -> None:
        """Back to `inbox/` without burning an attempt (drain, emergency stop, a systemic failure)."""
        tick = claim.tick
        with _undo_on_error(tick):
            tick.not_before = iso(not_before) if not_before else None
            self._record(tick, claim.attempt, outcome, reason, details)
            self._move(claim, self.inbox / tick.filename, overwrite=True)
        self.index.add(tick)
        self.events.emit("requeued", id=tick.id, cadence=tick.cadence, reason=reason, **details)

    def dead_letter(self, claim: Claim, reason: str, *, recorded: bool = False, **details: Any) -> None:
        """claimed/ -> dlq/ with the reason and the full history."""
        tick = claim.tick
        with _undo_on_error(tick):
            if not recorded:
                self._record(tick, claim.attempt, "dead_letter", reason, details)
            data = tick.to_json()
            data["dlq_reason"] = reason
            data["dlq_at"] = iso(self.clock.now())
            self._move(claim, self.dlq / tick.filename, overwrite=True, data=data)
        self.events.emit("dlq", level="error", id=tick.id, cadence=tick.cadence, reason=reason,
                         attempts=tick.attempts)

    def inspect(self, name: str) -> Seen:
        """Read `inbox/<name>` for the index without following links or blocking on FIFOs.

        Raises TickInvalid (quarantine it) or FileNotFoundError (it vanished: ignore).
        """
        if not name.endswith(".json") or name.endswith(REASON_SUFFIX):
            raise TickInvalid("not a tick file name (expected <id>.json)")
        tick, st = read_tick_file(self.inbox / name, name[:-5])
        return Seen(tick, st.st_ino, st.st_size, st.st_mtime_ns)

    # -- recovery ---------------------------------------------------------
    def reap_stale(self, *, orphan_grace: float = 60.0, active: set[str] | None = None) -> list[str]:
        """Return ticks whose claim owner is gone to `inbox/` (or finish an interrupted move).

        A tick whose owner died `max_reaps` times is dead-lettered: it is probably what kills the daemon.
        With `active` (the ids this process is working on), this process's own other claims count as
        stale too: a disk error interrupted their settling, and they must not wait for a restart.
        """
        reaped: list[str] = []
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
            if self._settled_elsewhere(stem):
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
            if interrupted:
                self.requeue(claim, "settling was interrupted by an I/O error; requeued")
                reaped.append(tick.id)
                continue
            tick.reaps += 1
            dead_owner = owner.pid if owner else None
            if tick.reaps >= self.max_reaps:
                self.dead_letter(claim, f"its owner died {tick.reaps} times while holding it", owner_pid=dead_owner)
            else:
                self._record(tick, claim.attempt, "reaped", "claim owner is gone", {"owner_pid": dead_owner})
                self._move(claim, self.inbox / tick.filename, overwrite=True)
                self.index.add(tick)
                self.events.emit("reaped", level="warn", id=tick.id, cadence=tick.cadence, owner_pid=dead_owner)
            reaped.append(tick.id)
        return reaped

    def _settled_elsewhere(self, stem: str) -> bool:
        """True if a whole later copy of the tick exists (now made durable); a torn one is removed.

        A group commit publishes done copies before its sync, so after a crash a done copy may be empty
        or cut short. Only a copy that parses as this tick is trusted over the claimed one.
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

    # -- inspection -------------------------------------------------------
    def depth(self, folder: Folder, *, stop_at: int | None = None) -> int:
        """How many ticks a folder holds (quarantine notes not counted); counting stops at `stop_at`."""
        count = 0
        try:
            with os.scandir(self.layout.folder(folder)) as it:
                for entry in it:
                    if not entry.name.endswith(REASON_SUFFIX):
                        count += 1
                        if count == stop_at:
                            break
        except FileNotFoundError:
            pass
        return count

    def depths(self) -> dict[str, int]:
        """Depth of every state folder."""
        return {folder.value: self.depth(folder) for folder in Folder}

    # -- internals --------------------------------------------------------
    def _record(self, tick: Tick, attempt: int, outcome: str, reason: str | None, details: dict[str, Any]) -> None:
        """Append a history entry, secrets masked."""
        tick.record(outcome, at=self.clock.now(), attempt=attempt, reason=reason, redact=self.events.redactor.data,
                    **details)

    def _move(self, claim: Claim, target: Path, *, overwrite: bool, data: dict[str, Any] | None = None) -> None:
        """Publish the tick's new content at `target`, then drop the claimed copy."""
        self._publish(claim.tick, target, overwrite=overwrite, data=data)
        unlink_missing_ok(claim.path)

    def _publish(self, tick: Tick, target: Path, *, overwrite: bool, data: dict[str, Any] | None = None,
                 durable: bool = True) -> None:
        payload = tick.to_bytes() if data is None else encode(data)
        tmp = write_tmp(self.tmp, payload, durable=durable)
        try:
            if overwrite:
                os.replace(tmp, target)
            else:
                os.link(tmp, target)  # EEXIST instead of overwriting, as Maildir does
                os.unlink(tmp)
        except BaseException:
            unlink_missing_ok(tmp)
            raise
        if durable:
            fsync_dir(target.parent)



@contextmanager
def _undo_on_error(tick: Tick) -> Iterator[None]:
    """If publishing the tick's next state fails (disk full, read-only), restore its in-memory fields, so
    the settle the daemon retries records the attempt and its history entry once, not once per try."""
    attempts, not_before, reaps, kept = tick.attempts, tick.not_before, tick.reaps, len(tick.history)
    try:
        yield
    except BaseException:
        tick.attempts, tick.not_before, tick.reaps = attempts, not_before, reaps
        del tick.history[kept:]
        raise
