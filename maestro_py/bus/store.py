"""The filesystem tick bus: the one place that moves tick files between state folders (`DeadLetters`, its
`dlq/` side, lives in dlq.py; `OperatorMoves`, an operator's cancel and release of a queued tick, in
operator.py; `Recovery`, the reaper, in recovery.py), and keeps its index of `inbox/` (inbox.py) in step with
every move.

A tick's state *is* the folder it is in (see `paths.Folder`); each arrow after `deliver` is a rename of the
same file, after one record line was appended to it (tickfile.py):

    tmp/ --deliver--> inbox/ --claim--> claimed/ --complete--> done/      complete: += {"to": "done", ...}
                        ^                  |  \\--dead_letter--> dlq/      dead_letter: += {"to": "dlq", ...}
                        +----requeue/fail--+                               fail, requeue: += {"to": "inbox", ...}
                        +------reap--------+   (the claim's owner died)    reap: += {"to": "inbox", ...}

`deliver` is the only write of a new file: under `tmp/`, fsynced, linked into `inbox/`, the folder fsynced.
A settling move appends its record (fdatasync), renames the file into its next folder, fsyncs that folder:
no new inode and no copy, so there is never more than one copy of a tick. A crash between the append and the
rename leaves the record in the claimed file; `reap_stale` finishes a move to `done/` or `dlq/` it names. A
file the next record would take past the size limit is rewritten whole instead (under `tmp/`, as `deliver`),
and so are the operator's moves (cancel, release, replay), which are rare.

Inside `group_commit()` (the daemon's inline batches), `complete` appends and renames without waiting for the
disk; leaving the block makes the whole group durable with one sync, and only then writes their `done`
events. A power cut before that sync loses at most those records: each tick is still in `claimed/` (run
again, or moved on by its record) or in `done/`.

`Bus.index` is updated by the bus itself from the tick in memory whenever a tick enters `inbox/`
(deliver, retry, requeue, reap, replay) or leaves it (claim); files that arrive from elsewhere are found
by `index.refresh()` / `index.notice()`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from maestro_py.bus.claim import CLAIM_SEP, Claim
from maestro_py.bus.dlq import REASON_SUFFIX, DeadLetters
from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import (append_line, flocked, fsync_dir, sync_files, truncate_quietly,
                                 unlink_missing_ok, write_tmp)
from maestro_py.bus.inbox import InboxIndex, Seen
from maestro_py.bus.operator import OperatorMoves
from maestro_py.bus.recovery import Recovery
from maestro_py.bus.owner import Owner
from maestro_py.bus.tick import MAX_TICK_BYTES, Tick
from maestro_py.bus.tickfile import encode_record, read_tick_file
from maestro_py.clock import Clock, SystemClock, iso
from maestro_py.errors import InboxFull, TickInvalid
from maestro_py.paths import Folder, Layout

ENQUEUE_LOCK = "enqueue.lock"  # serializes the backlog ceiling's count-and-deliver
MAX_DELAY_SECONDS = 366 * 86400


class Bus(DeadLetters, OperatorMoves, Recovery):
    """Delivery, claiming and settling of ticks under one agent root, and the index of what is queued."""

    def __init__(self, layout: Layout, *, clock: Clock | None = None, events: EventLog | None = None,
                 owner: Owner | None = None, max_inbox: int = 1000) -> None:
        self.layout = layout
        self.clock = clock or SystemClock()
        self.events = events or EventLog(layout, clock=self.clock)
        if owner is not None:
            self.owner = owner
        self.max_inbox = max_inbox
        self.quarantined = 0  # bad entries moved to dlq/ by this process
        self.tmp = layout.folder(Folder.TMP)
        self.inbox = layout.folder(Folder.INBOX)
        self.claimed = layout.folder(Folder.CLAIMED)
        self.done = layout.folder(Folder.DONE)
        self.dlq = layout.folder(Folder.DLQ)
        self._dirs = {folder: str(layout.folder(folder)) for folder in Folder}  # as str, for the hot path
        self._group: list[dict[str, Any]] | None = None  # `done` events of completions awaiting their sync
        self.index = InboxIndex(self.inbox, self.inspect, self.quarantine, clock=self.clock)

    @cached_property
    def owner(self) -> Owner:
        """Who this bus claims for: the calling process, looked up on first use (an enqueue never claims)."""
        return Owner.current()

    def reindex(self) -> None:
        """Rebuild the index from the folder (after a step failed half-way through an update)."""
        self.index = InboxIndex(self.inbox, self.inspect, self.quarantine, clock=self.clock)

    # -- delivery ---------------------------------------------------------
    def enqueue(self, cadence: str, *, source: str = "cli", payload: dict[str, Any] | None = None,
                delay: float = 0.0, trusted: bool = True) -> Tick:
        """Create and deliver a new tick, refusing when the inbox is at capacity (exactly, under concurrency)."""
        if not 0 <= delay <= MAX_DELAY_SECONDS:  # also NaN and infinity
            raise TickInvalid(f"delay must be between 0 and {MAX_DELAY_SECONDS} seconds (366 days)")
        now = self.clock.now()
        not_before = now + timedelta(seconds=delay) if delay > 0 else None
        tick = Tick.new(cadence, now=now, source=source, payload=payload, not_before=not_before, trusted=trusted)
        tick.record("enqueued", at=now, source=source, trusted=None if trusted else False)
        # Count-then-deliver under one lock: racing enqueues at the ceiling must not all see room for one.
        with flocked(self.layout.bus_dir / ENQUEUE_LOCK):
            depth = self.depth(Folder.INBOX, stop_at=self.max_inbox)  # a full check, not a full count
            if depth >= self.max_inbox:
                self.events.emit("enqueue_refused", level="warn", cadence=cadence, reason="inbox_full", depth=depth)
                raise InboxFull(depth, self.max_inbox)
            self.deliver(tick)
        return tick

    def deliver(self, tick: Tick) -> Path:
        """Publish a new tick into `inbox/`; never overwrites an existing file.

        Its `enqueued` event is written once the file is durable under `tmp/` and before it is linked into
        `inbox/`, where a consumer may claim it at once: the log never shows `claimed` before `enqueued`.
        """
        target = self.inbox / tick.filename
        tmp = self._stage(tick)
        self.events.emit("enqueued", id=tick.id, cadence=tick.cadence, source=tick.source,
                         not_before=tick.not_before)
        try:
            self._place(tmp, target, overwrite=False)
        except OSError as exc:
            self.events.emit("enqueue_failed", level="error", id=tick.id, cadence=tick.cadence,
                             reason=f"{type(exc).__name__}: {exc}")
            raise
        self.index.add(tick)
        return target

    # -- claiming ---------------------------------------------------------
    def claim(self, name: str) -> Claim | None:
        """Take `inbox/<name>` by one atomic rename; None if another consumer won or the file is bad.

        If the index kept its parse of this file, the file is not read again while it is still the same
        version: a rename keeps the inode, and any rewrite changes the inode, size or mtime.
        """
        seen = self.index.take(name)
        stem = name[:-5] if name.endswith(".json") else name
        target = f"{self._dirs[Folder.CLAIMED]}/{stem}{CLAIM_SEP}{self.owner.token}.json"  # str: the hot path
        try:
            os.rename(f"{self._dirs[Folder.INBOX]}/{name}", target)
        except FileNotFoundError:
            return None  # lost the race, or it was never there
        try:
            if seen is not None and seen.matches(os.lstat(target)):
                tick = seen.tick
            else:
                tick, _ = read_tick_file(target, stem)
        except TickInvalid as exc:
            self.quarantine(Path(target), str(exc), original_name=name)
            return None
        except FileNotFoundError:
            return None
        self.events.emit("claimed", id=tick.id, cadence=tick.cadence, attempt=tick.attempts + 1)
        return Claim(tick, target)

    # -- settling ---------------------------------------------------------
    def complete(self, claim: Claim, outcome: str = "ok", *, reason: str | None = None, ran: bool = True,
                 **details: Any) -> None:
        """claimed/ -> done/ with a final history entry (durable now, or when the group commits). `ran`: this claim
        was an attempt (a run, a handler, a guard), so `attempts` counts it; a merge into a twin was not."""
        tick = claim.tick
        event = {"id": tick.id, "cadence": tick.cadence, "outcome": outcome, "reason": reason, **details}
        with _undo_on_error(tick):
            self._record(tick, claim.attempt, outcome, reason, details)
            changes = {}
            if ran:
                tick.attempts = claim.attempt
                changes = {"attempts": tick.attempts}
            if self._group is not None:
                self._advance(claim, Folder.DONE, changes, durable=False)
                self._group.append(event)
                return
            self._advance(claim, Folder.DONE, changes)
        self.events.emit("done", **event)

    @contextmanager
    def group_commit(self) -> Iterator[None]:
        """Completions inside the block become durable together, with one sync when it ends.

        Each completion appends its record and renames the file into `done/` without waiting for the disk;
        leaving the block syncs them all at once, and only then are their `done` events written. A power cut
        before that sync finds each tick either still in `claimed/` (the reaper finishes the move its record
        names, or runs it again if the record was lost too) or in `done/`, at worst without its last record.
        """
        if self._group is not None:  # already inside one: the outer block commits
            yield
            return
        self._group = []
        try:
            with self.events.batched():  # the block's events reach the log in one write, after the sync
                try:
                    yield
                finally:
                    group, self._group = self._group, None
                    if group:
                        sync_files([], [self.done])
                        for event in group:
                            self.events.emit("done", **event)
        finally:
            self._group = None

    def retry(self, claim: Claim, reason: str, *, max_attempts: int, retry_at: datetime | None = None,
              outcome: str = "failed", **details: Any) -> None:
        """A failed attempt that may be tried again: the attempt is used, back to `inbox/` not before `retry_at`
        (`max_attempts` is only said in the event: the policy decided it is not exhausted)."""
        tick = claim.tick
        with _undo_on_error(tick):  # a settle retried after an I/O error burns the attempt once
            tick.attempts += 1
            self._record(tick, tick.attempts, outcome, reason, details)
            tick.not_before = iso(retry_at) if retry_at else None
            self._advance(claim, Folder.INBOX, {"attempts": tick.attempts, "not_before": tick.not_before})
        self.index.add(tick)
        self.events.emit("retry", level="warn", id=tick.id, cadence=tick.cadence, attempt=tick.attempts,
                         max_attempts=max_attempts, not_before=tick.not_before, reason=reason, **details)

    def requeue(self, claim: Claim, reason: str, *, not_before: datetime | None = None, outcome: str = "requeued",
                reaps: int | None = None, **details: Any) -> None:
        """Back to `inbox/` without burning an attempt (drain, emergency stop, a systemic failure; `reaps`: its
        claim owner died, for that many times now)."""
        tick = claim.tick
        with _undo_on_error(tick):
            tick.not_before = iso(not_before) if not_before else None
            self._record(tick, claim.attempt, outcome, reason, details)
            changes: dict[str, Any] = {"not_before": tick.not_before}
            if reaps is not None:
                tick.reaps = changes["reaps"] = reaps
            self._advance(claim, Folder.INBOX, changes)
        self.index.add(tick)
        if reaps is not None:
            self.events.emit("reaped", level="warn", id=tick.id, cadence=tick.cadence, **details)
        else:
            self.events.emit("requeued", id=tick.id, cadence=tick.cadence, reason=reason, **details)

    def dead_letter(self, claim: Claim, reason: str, *, burn: bool = False, outcome: str = "dead_letter",
                    dlq_reason: str | None = None, reaps: int | None = None, recorded: bool = False,
                    changes: dict[str, Any] | None = None, **details: Any) -> None:
        """claimed/ -> dlq/ with the reason and the full history. `burn`: this claim used an attempt (its history
        entry counts it); `dlq_reason`: the dead letter's own reason, when it says more than the entry's
        (`changes`, `recorded`: the caller changed those fields and recorded the entry already)."""
        tick = claim.tick
        changes = dict(changes or {})
        with _undo_on_error(tick):
            if burn:
                tick.attempts += 1
                changes["attempts"] = tick.attempts
            if reaps is not None:
                tick.reaps = changes["reaps"] = reaps
            if not recorded:
                self._record(tick, tick.attempts if burn else claim.attempt, outcome, reason, details)
            tick.dlq_reason, tick.dlq_at = self.events.redactor.text(dlq_reason or reason), iso(self.clock.now())
            self._advance(claim, Folder.DLQ, {**changes, "dlq_reason": tick.dlq_reason, "dlq_at": tick.dlq_at})
        self.events.emit("dlq", level="error", id=tick.id, cadence=tick.cadence, reason=dlq_reason or reason,
                         attempts=tick.attempts)

    def inspect(self, name: str) -> Seen:
        """Read `inbox/<name>` for the index without following links or blocking on FIFOs.

        Raises TickInvalid (quarantine it) or FileNotFoundError (it vanished: ignore).
        """
        if not name.endswith(".json") or name.endswith(REASON_SUFFIX):
            raise TickInvalid("not a tick file name (expected <id>.json)")
        tick, st = read_tick_file(f"{self._dirs[Folder.INBOX]}/{name}", name[:-5])
        return Seen(tick, st.st_ino, st.st_size, st.st_mtime_ns)

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
        tick.record(outcome, at=self.clock.now(), attempt=attempt, reason=reason, redact=self.events.redactor.text,
                    **details)

    def _advance(self, claim: Claim, to: Folder, changes: dict[str, Any], *, durable: bool = True) -> None:
        """Move a claimed tick on by appending one record (its newest history entry and the fields that changed)
        to the file it already is, then renaming that file into `to`: no new inode, no copy.

        Durable: the record is fdatasynced before the rename, and the folder after it. A file the record would take
        past MAX_TICK_BYTES (or not read from disk, or not writable) is rewritten whole instead (compacted).
        """
        tick = claim.tick
        target = f"{self._dirs[to]}/{tick.filename}"
        line = encode_record(to.value, tick.history[-1], changes, entry_json=tick.encoded_last_entry())
        if tick.unterminated:
            line = b"\n" + line
        size = tick.stored
        if not size or size + len(line) > MAX_TICK_BYTES or not self._append(claim, line, durable=durable):
            self._move(claim, Path(target), overwrite=True, durable=durable)
            return
        try:
            os.rename(claim.where, target)
        except BaseException:
            truncate_quietly(claim.where, size)  # the settle is retried: its record must not be there twice
            raise
        if durable:
            fsync_dir(self._dirs[to])
        tick.stored, tick.torn, tick.unterminated, tick.moving_to = size + len(line), 0, False, to.value

    def _append(self, claim: Claim, line: bytes, *, durable: bool) -> bool:
        """Append one record to the claimed file (a torn one left by a crash cut off first); False if the file
        cannot be written to in place. With `_publish`, the bus's only writes of tick content."""
        return append_line(claim.where, line, claim.tick.stored, cut=claim.tick.torn > 0, durable=durable)

    def _move(self, claim: Claim, target: Path, *, overwrite: bool, durable: bool = True) -> None:
        """Publish the tick's whole content at `target` as one line (a new file), then drop the claimed copy."""
        self._publish(claim.tick, target, overwrite=overwrite, durable=durable)
        unlink_missing_ok(claim.where)

    def _publish(self, tick: Tick, target: Path, *, overwrite: bool, durable: bool = True) -> None:
        """Write the tick whole, as one line, to a new file at `target` (under `tmp/` first)."""
        self._place(self._stage(tick, durable=durable), target, overwrite=overwrite, durable=durable)

    def _stage(self, tick: Tick, *, durable: bool = True) -> Path:
        """The tick's whole content in a new file under `tmp/` (fsynced if `durable`)."""
        payload = tick.to_bytes()
        tmp = write_tmp(self.tmp, payload, durable=durable)
        tick.stored, tick.torn, tick.unterminated, tick.moving_to = len(payload), 0, False, None
        return tmp

    def _place(self, tmp: Path, target: Path, *, overwrite: bool, durable: bool = True) -> None:
        """Publish a staged file at `target`: renamed over it, or linked (never overwriting, as Maildir does)."""
        try:
            if overwrite:
                os.replace(tmp, target)
            else:
                os.link(tmp, target)  # EEXIST instead of overwriting
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
    dlq = tick.dlq_reason, tick.dlq_at
    try:
        yield
    except BaseException:
        tick.attempts, tick.not_before, tick.reaps = attempts, not_before, reaps
        tick.dlq_reason, tick.dlq_at = dlq
        del tick.history[kept:]
        tick.history_bytes = tick.last_entry_json = None
        raise
