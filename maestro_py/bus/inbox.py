"""The bus's in-memory index of `inbox/`: FIFO per cadence, delayed ticks by due time.

A claim must not cost more with a bigger backlog, so the daemon never re-lists and sorts the inbox to
pick the next tick. Nor must start-up: a scan only lists names (ids sort by enqueue time), and files are read
lazily, oldest first, a batch at a time, as the picking reaches them (`heads`). A tick read is eligible only
once every older name has been read, so FIFO per cadence holds while the rest of a backlog is still unread,
and a delayed tick is still held back when it is read. The `Bus` keeps this index in step itself: every tick it moves into `inbox/` (deliver,
retry, requeue, reap, replay) is indexed from the tick in memory, and a claim takes it out. A file that
arrives from elsewhere (another process's enqueue, a hand-dropped file) is read once, when first seen (a
wake-up event, or a rescan when the folder's mtime changed); after that, picking the next tick is a heap
operation.

A tick the index knows can be *replaced* in `inbox/` by another process (an operator's `tick retry-now` or
`circuit reset` clears its `not_before`: written aside, renamed over it). The index keeps each file's inode, and
a file found under a known name with another inode (a wake-up event, or a rescan, where `scandir` gives the
inode for free) is read again, so its new due time counts at once.

A file written in place (not written aside and renamed in) can be seen before its writer is done. One that
does not parse *yet* (it ends too soon) and was modified in the last FRESH_SECONDS is left alone, kept in a
small pending set and looked at again on every `refresh`/`notice` until it parses or has stopped changing
for that long; then it is quarantined like any bad file. Everything else that is wrong (a link, a FIFO, too
big, a bad name, complete JSON that is not a tick) is quarantined at once: no more writing can fix it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from maestro_py.bus.tick import MAX_TICK_BYTES, Tick
from maestro_py.clock import Clock, SystemClock
from maestro_py.errors import TickInvalid

PARSED_KEPT = 8192  # parsed ticks kept for their claim (~1.2 KB each: ≤ 10 MB), so a claim need not read again
FRESH_SECONDS = 2.0  # a file modified this recently that does not parse yet may still be being written
PENDING_MAX = 1024   # files waited on at once; past that a flood of them is quarantined at once, as before
READ_BATCH = 256     # unread files read at once (oldest first), by a scan or when the picking reaches them
READ_PER_PASS = 4096  # at most this many read by one `heads()` walk: a backlog held by its gates is read over passes
# How `parse_tick` describes bytes that end too soon (a JSON value or a UTF-8 sequence cut short): more
# bytes may still make them a tick. Pinned by tests/test_quarantine.py.
UNFINISHED = ("not valid JSON: Expecting", "not valid JSON: Unterminated string", "not valid JSON: Invalid \\uXXXX",
              "not valid UTF-8 (unexpected end of data")


@dataclass(frozen=True)
class Seen:
    """A tick as read from `inbox/`, with what identifies that version of the file (inode, size, mtime)."""

    tick: Tick
    ino: int
    size: int
    mtime_ns: int

    def matches(self, st: os.stat_result) -> bool:
        return (stat.S_ISREG(st.st_mode) and st.st_ino == self.ino and st.st_size == self.size
                and st.st_mtime_ns == self.mtime_ns)


@dataclass(frozen=True)
class Entry:
    """What the index keeps of one queued tick."""

    name: str
    cadence: str
    due: float | None  # epoch seconds of not_before, None = now
    fingerprint: str   # hash of the payload: equal payloads are duplicates for overlap handling

    @classmethod
    def of(cls, tick: Tick) -> "Entry":
        """The entry for a tick in memory (no need to read its file back)."""
        due = tick.not_before_dt.timestamp() if tick.not_before else None
        return cls(tick.filename, tick.cadence, due, payload_fingerprint(tick.payload))


class InboxIndex:
    """Which queued ticks are runnable, in FIFO order by id, per cadence."""

    def __init__(self, folder: Path, inspect: Callable[[str], Seen],
                 quarantine: Callable[[Path, str], Path | None], *, clock: Clock | None = None) -> None:
        self.folder = folder
        self._inspect = inspect          # reads a file found in the folder (raises TickInvalid)
        self._quarantine = quarantine    # moves a bad one to dlq/
        self._clock = clock or SystemClock()  # wall time, to compare with file mtimes
        self._known: dict[str, Entry] = {}
        self._ready: dict[str, list[str]] = {}            # cadence -> heap of names
        self._delayed: list[tuple[float, str]] = []       # heap of (due, name)
        self._fingerprints: dict[str, Counter[str]] = {}  # cadence -> payload hash -> count
        self._parsed: dict[str, Seen] = {}                # name -> the parse, for the first PARSED_KEPT
        self._pending: dict[str, tuple[int, int, int]] = {}  # name -> (ino, size, mtime_ns) of an unfinished file
        self._inodes: dict[str, int] = {}                 # name -> inode of the file indexed under it
        self._unread: list[str] = []                      # heap of names a scan found, not read yet
        self._unread_set: set[str] = set()                # the same names (the heap's entries may be stale)
        self._scanned_mtime: int | None = None
        self._now = 0.0  # time of the last promote()

    # -- discovery --------------------------------------------------------
    def refresh(self, *, force: bool = False) -> int:
        """Rescan `inbox/` if it changed since the last scan; returns how many new ticks were read (the oldest
        READ_BATCH files not read yet are read now, the rest when the picking reaches them: see `unread`).

        Files still being written are looked at again whether or not the folder changed: writing to a file
        does not change its folder's mtime.
        """
        added = self._recheck_pending()
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return added
        if not force and mtime == self._scanned_mtime:
            return added
        self._scanned_mtime = mtime
        with os.scandir(self.folder) as it:
            present = {e.name: e.inode() for e in it}
        for gone in self._known.keys() - present.keys():
            self._forget(gone)
        for gone in self._pending.keys() - present.keys():
            del self._pending[gone]
        self._unread_set &= present.keys()
        for name in [n for n in self._known if self._inodes.get(n, present[n]) != present[n]]:
            self._forget(name)  # replaced under its name: read again below
        new = present.keys() - self._known.keys() - self._pending.keys() - self._unread_set
        if len(new) > 64:
            self._unread.extend(new)
            heapq.heapify(self._unread)
        else:
            for name in new:
                heapq.heappush(self._unread, name)
        self._unread_set |= new
        return added + self._read_ahead(READ_BATCH)[1]

    def notice(self, name: str) -> int:
        """Learn about a file found in `inbox/` (a wake-up event or a scan); 1 if it is a new tick (or a known one
        replaced under its name)."""
        if name in self._known:
            if not self._replaced(name):
                return 0
            self._forget(name)
        self._unread_set.discard(name)
        try:
            seen = self._inspect(name)
        except FileNotFoundError:
            self._pending.pop(name, None)
            return 0
        except TickInvalid as exc:
            if not self._unfinished(name, str(exc)):
                self._pending.pop(name, None)
                self._quarantine(self.folder / name, str(exc))
            return 0
        self._pending.pop(name, None)
        self.add(seen.tick, ino=seen.ino)
        if len(self._parsed) < PARSED_KEPT:
            self._parsed[name] = seen
        return 1

    def add(self, tick: Tick, *, ino: int | None = None) -> None:
        """Index a tick that is now in `inbox/` (the bus has just moved it there, or a scan found it); `ino`: its
        file's inode, looked up when not given."""
        entry = Entry.of(tick)
        self._forget(entry.name)
        self._pending.pop(entry.name, None)
        self._known[entry.name] = entry
        if ino is None:
            try:
                ino = os.lstat(self.folder / entry.name).st_ino
            except OSError:
                ino = None
        if ino is not None:
            self._inodes[entry.name] = ino
        self._fingerprints.setdefault(entry.cadence, Counter())[entry.fingerprint] += 1
        if entry.due is None or entry.due <= self._now:  # (due by the last `promote`: read while picking)
            heapq.heappush(self._ready.setdefault(entry.cadence, []), entry.name)
        else:
            heapq.heappush(self._delayed, (entry.due, entry.name))

    def parsed(self, name: str) -> Seen | None:
        """The parse kept of `inbox/<name>` when it was found, if any."""
        return self._parsed.get(name)

    def take(self, name: str) -> Seen | None:
        """Forget a tick about to be claimed; returns its parse if kept (pass it to `Bus.claim`)."""
        seen = self._parsed.get(name)
        self._forget(name)
        return seen

    # -- picking ----------------------------------------------------------
    def promote(self, now: datetime) -> None:
        """Move delayed ticks whose time has come into their cadence's ready queue."""
        t = self._now = now.timestamp()
        while self._delayed and self._delayed[0][0] <= t:
            due, name = heapq.heappop(self._delayed)
            entry = self._known.get(name)
            if entry is not None and entry.due == due:
                heapq.heappush(self._ready.setdefault(entry.cadence, []), name)

    def heads(self, *, read_ahead: bool = True) -> Iterator[Entry]:
        """The oldest runnable tick of each cadence, oldest first overall (call `promote` first).

        Only ticks older than every unread name are offered (an unread file may be an older tick of the same
        cadence). Once those are walked, unread files are read, oldest first, and the heads they make eligible
        follow, up to READ_PER_PASS files per walk (`read_ahead=False`: none).
        """
        offered: set[str] = set()
        budget = READ_PER_PASS if read_ahead else 0
        while True:
            frontier = self._frontier()
            heads: list[Entry] = []
            for cadence, heap in list(self._ready.items()):
                if cadence in offered:
                    continue
                entry = self._head(cadence, heap)
                if entry is not None and (frontier is None or entry.name < frontier):
                    heads.append(entry)
            heads.sort(key=lambda e: e.name)
            for entry in heads:
                offered.add(entry.cadence)
                yield entry
            if frontier is None or budget <= 0:
                return
            budget -= max(self._read_ahead(min(READ_BATCH, budget))[0], 1)

    @property
    def unread(self) -> int:
        """Files found in `inbox/` and not read yet (the daemon keeps picking, not sleeping, while there are)."""
        return len(self._unread_set)

    def duplicates(self, cadence: str, fingerprint: str) -> int:
        """Queued ticks of `cadence` with this payload fingerprint."""
        return self._fingerprints.get(cadence, Counter())[fingerprint]

    def ready_entries(self, cadence: str) -> list[Entry]:
        """Every runnable tick of `cadence`, oldest first (a scan of that cadence's queue only)."""
        names = sorted(set(self._ready.get(cadence, [])))
        entries = [self._known.get(n) for n in names]
        return [e for e in entries if e is not None and e.cadence == cadence and (e.due is None or e.due <= self._now)]

    def has_duplicates(self, cadence: str) -> bool:
        """True if two queued ticks of `cadence` carry the same payload."""
        return any(n > 1 for n in self._fingerprints.get(cadence, Counter()).values())

    def next_due(self) -> float | None:
        """Epoch seconds of the earliest delayed tick, if any."""
        while self._delayed:
            due, name = self._delayed[0]
            entry = self._known.get(name)
            if entry is not None and entry.due == due:
                return due
            heapq.heappop(self._delayed)
        return None

    def pending(self) -> list[str]:
        """Names of files that do not parse yet and may still be being written, sorted."""
        return sorted(self._pending)

    def __len__(self) -> int:
        return len(self._known) + len(self._unread_set)

    # -- internals --------------------------------------------------------
    def _frontier(self) -> str | None:
        """The oldest unread name (None: everything found has been read)."""
        heap = self._unread
        while heap and heap[0] not in self._unread_set:
            heapq.heappop(heap)  # read since, or gone
        return heap[0] if heap else None

    def _read_ahead(self, limit: int) -> tuple[int, int]:
        """Read up to `limit` unread files, oldest first; returns how many were looked at, and were ticks."""
        looked = added = 0
        while looked < limit and self._frontier() is not None:
            name = heapq.heappop(self._unread)
            self._unread_set.discard(name)
            added += self.notice(name)
            looked += 1
        return looked, added

    def _unfinished(self, name: str, reason: str) -> bool:
        """True (and the file kept pending) if it may still be being written: it ends too soon for a tick,
        is a regular file of a size a tick can have, and was modified within FRESH_SECONDS."""
        if not reason.startswith(UNFINISHED):
            return False
        try:
            st = os.lstat(self.folder / name)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_TICK_BYTES or not self._fresh(st):
            return False
        if name not in self._pending and len(self._pending) >= PENDING_MAX:
            return False
        self._pending[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return True

    def _fresh(self, st: os.stat_result) -> bool:
        # Either side of now: a writer's clock a little ahead (a network share) must not quarantine it early.
        return abs(self._clock.now().timestamp() - st.st_mtime) < FRESH_SECONDS

    def _recheck_pending(self) -> int:
        """Look again at files that did not parse yet: read those that changed or have stopped changing."""
        added = 0
        for name, version in list(self._pending.items()):
            try:
                st = os.lstat(self.folder / name)
            except FileNotFoundError:
                del self._pending[name]
                continue
            if (st.st_ino, st.st_size, st.st_mtime_ns) == version and self._fresh(st):
                continue  # not written to since, and not yet quiet for long: nothing new to read
            added += self.notice(name)
        return added

    def _head(self, cadence: str, heap: list[str]) -> Entry | None:
        """Skip lazily deleted names at the top of a cadence's heap."""
        while heap:
            entry = self._known.get(heap[0])
            # A name can sit in a heap after it was claimed, or requeued with a later not_before.
            if entry is not None and entry.cadence == cadence and (entry.due is None or entry.due <= self._now):
                return entry
            heapq.heappop(heap)
        del self._ready[cadence]
        return None

    def _replaced(self, name: str) -> bool:
        """True if the file now under a known name is not the one indexed (another inode)."""
        try:
            ino = os.lstat(self.folder / name).st_ino
        except OSError:
            return False
        return self._inodes.get(name, ino) != ino

    def _forget(self, name: str) -> None:
        self._parsed.pop(name, None)
        self._inodes.pop(name, None)
        entry = self._known.pop(name, None)
        if entry is not None:
            counts = self._fingerprints[entry.cadence]
            counts[entry.fingerprint] -= 1
            if counts[entry.fingerprint] <= 0:
                del counts[entry.fingerprint]


_EMPTY = hashlib.sha1(b"{}").hexdigest()[:16]


def payload_fingerprint(payload: object) -> str:
    """A stable hash of a payload (key order does not matter)."""
    if payload == {}:
        return _EMPTY  # most scheduled ticks: no encoding needed
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
