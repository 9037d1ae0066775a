"""A tick's per-run logs as an operator reads them (`maestro tick log`, the status page's run page): which runs it
had, one run's log read in bounded pieces and shown (rendered by `ops.transcript`, raw, or stderr's lines), and
following a live run as its log grows until the tick settles.

Nothing here holds a whole log: files are read a CHUNK at a time, a line is kept to `transcript.MAX_LINE` bytes, and
the run page reads at most PAGE_HEAD + PAGE_TAIL bytes of a log and keeps at most PAGE_ENTRIES display lines.
Secrets are masked on the way out: the daemon redacts a log only once its run has ended, so a live one may still
hold them. A log is opened without following a link, and only if it is a regular file.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from maestro_py.bus.claim import CLAIM_SEP
from maestro_py.bus.owner import Owner
from maestro_py.bus.store import Bus
from maestro_py.bus.tick import Tick
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.ops.ticks import LOOKS
from maestro_py.ops.transcript import MAX_LINE, TEXT_WIDTH, Entry, LineReader, Transcript, cut
from maestro_py.paths import Folder, Layout
from maestro_py.redact import Redactor
from maestro_py.session.runlog import StreamRedactor, run_logs

CHUNK = 1 << 20          # bytes read at a time
POLL_SECONDS = 0.2       # how often a followed log and its tick are looked at
PAGE_HEAD = 1 << 20      # the run page reads a longer log's first this many bytes…
PAGE_TAIL = 4 << 20      # …and its last this many (where the result is)
PAGE_ENTRIES = 2000      # display lines on the run page: the first PAGE_FIRST and the last of the rest
PAGE_FIRST = 200
STDERR_TAIL = 64 << 10   # bytes of stderr the run page shows the last lines of
STDERR_LINES = 40
_ATTEMPT = re.compile(r"-\d{6}-a(\d+)-[^.]+\.std(?:out|err)\.log\Z")


@dataclass(frozen=True)
class Run:
    """One run of a tick: its attempt, the logs' common name and each log file (None: absent, as a log is removed
    when its run wrote nothing to it)."""

    attempt: int
    name: str
    stdout: Path | None
    stderr: Path | None


def runs(layout: Layout, tick: Tick) -> list[Run]:
    """The tick's runs with a log, oldest first (an attempt that was requeued, not burnt, may have run twice)."""
    found: dict[str, dict[str, Path]] = {}
    for path in run_logs(layout, tick):
        base, _, kind = path.name[:-len(".log")].rpartition(".")
        found.setdefault(base, {})[kind] = path
    out = []
    for base, files in found.items():
        match = _ATTEMPT.search(next(iter(files.values())).name)
        if match:
            out.append(Run(int(match[1]), base, files.get("stdout"), files.get("stderr")))
    return out


def find(layout: Layout, tick_id: str) -> tuple[Folder, Tick] | None:
    """The folder holding the tick and the tick (None: no folder does); TickInvalid if it cannot be read."""
    bus = Bus(layout)
    for _ in range(LOOKS):
        found = bus.whereis(tick_id)
        if found is None:
            return None
        try:
            return found[0], read_tick_file(found[1], tick_id)[0]
        except FileNotFoundError:
            continue  # it moved on while we looked
    return None


def pick(found: list[Run], attempt: int | None) -> Run | None:
    """The last run of `attempt`, or the last run of all (None: there is none)."""
    chosen = [r for r in found if attempt is None or r.attempt == attempt]
    return chosen[-1] if chosen else None


class Sink(Protocol):
    """Where a log's bytes go as they are read: shown, then closed when the log is over."""

    def feed(self, data: bytes) -> None: ...
    def reset(self) -> None: ...
    def close(self, *, settled: bool) -> None: ...


class Shown:
    """A stdout log rendered (`ops.transcript`): each display line goes to `out`, its secrets masked."""

    def __init__(self, out: Callable[[Entry], None], redactor: Redactor) -> None:
        self.out = out
        self.redactor = redactor
        self.reader = LineReader()
        self.transcript = Transcript(redactor.text)

    def feed(self, data: bytes) -> None:
        """Show the lines `data` completes."""
        for line in self.reader.feed(data):
            for entry in self.transcript.feed(self.redactor.bytes(line.data), line.size):
                self.out(entry)

    def reset(self) -> None:
        """Drop the line in progress (the file was replaced and is read again from that line)."""
        self.reader.reset()

    def close(self, *, settled: bool) -> None:
        """Show the last line, then what the transcript says at its end."""
        for line in self.reader.close():
            for entry in self.transcript.feed(self.redactor.bytes(line.data), line.size):
                self.out(entry)
        for entry in self.transcript.end(settled=settled):
            self.out(entry)


class Plain:
    """A log's lines as text (stderr), each cut to TEXT_WIDTH and masked; a line over MAX_LINE is named, not shown."""

    def __init__(self, out: Callable[[Entry], None], redactor: Redactor) -> None:
        self.out = out
        self.redactor = redactor
        self.reader = LineReader()

    def feed(self, data: bytes) -> None:
        """Show the lines `data` completes."""
        for line in self.reader.feed(data):
            self._show(line.data, line.size)

    def reset(self) -> None:
        """Drop the line in progress."""
        self.reader.reset()

    def close(self, *, settled: bool) -> None:
        """Show the last line, if it has no newline."""
        for line in self.reader.close():
            self._show(line.data, line.size)

    def _show(self, data: bytes, size: int) -> None:
        if size > MAX_LINE:
            self.out(Entry("note", f"[a line of {size:,} bytes not shown: over the {MAX_LINE >> 20} MiB a line is "
                                   "read to]"))
            return
        text = self.redactor.text(data.decode("utf-8", errors="replace").rstrip("\r"))
        self.out(Entry("stderr", cut(text, TEXT_WIDTH)))


class Raw:
    """A log's bytes as written, secrets masked: whole lines are passed on as they complete, a long line in
    progress as `StreamRedactor` lets it go (no secret is cut in two)."""

    def __init__(self, out: Callable[[bytes], None], redactor: Redactor) -> None:
        self.out = out
        self.redactor = redactor
        self.stream = StreamRedactor([redactor])

    def feed(self, data: bytes) -> None:
        """Pass on what `data` lets go."""
        end = data.rfind(b"\n") + 1
        if end:  # a secret never spans a line: each line's end flushes what was held
            self._emit(self.stream.feed(data[:end]) + self.stream.close())
        self._emit(self.stream.feed(data[end:]))

    def reset(self) -> None:
        """Drop what is held of the line in progress."""
        self.stream = StreamRedactor([self.redactor])

    def close(self, *, settled: bool) -> None:
        """Pass on the rest."""
        self._emit(self.stream.close())

    def _emit(self, data: bytes) -> None:
        if data:
            self.out(data)


def open_log(path: Path) -> int | None:
    """A read-only descriptor on `path` if it is a regular file (a link is not followed), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def chunks(path: Path, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    """The bytes of `path` from `start` to `stop` (None: its end), a CHUNK at a time; nothing if it cannot be read."""
    fd = open_log(path)
    if fd is None:
        return
    try:
        at = start
        while stop is None or at < stop:
            data = os.pread(fd, CHUNK if stop is None else min(CHUNK, stop - at), at)
            if not data:
                return
            at += len(data)
            yield data
    finally:
        os.close(fd)


def show(path: Path, sink: Sink, *, settled: bool) -> None:
    """The whole of `path` through `sink`, a chunk at a time."""
    for data in chunks(path):
        sink.feed(data)
    sink.close(settled=settled)


class Tail:
    """The new bytes of one log as it grows. The daemon may replace a log when its run ends (redacted, or cut to
    its cap, into a new file): the new file is then read on from the line after the last one already read."""

    def __init__(self, path: Path, sink: Sink) -> None:
        self.path = path
        self.sink = sink
        self.inode: int | None = None
        self.offset = 0
        self.lines = 0  # newlines read so far

    def drain(self) -> None:
        """Pass on every byte written since the last call."""
        fd = open_log(self.path)
        if fd is None:
            return  # not there yet, or removed (a run that wrote nothing)
        try:
            st = os.fstat(fd)
            if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.offset):
                self.sink.reset()
                self.offset = self._skip_lines(fd, self.lines)
            self.inode = st.st_ino
            while data := os.pread(fd, CHUNK, self.offset):
                self.offset += len(data)
                self.lines += data.count(b"\n")
                self.sink.feed(data)
        finally:
            os.close(fd)

    @staticmethod
    def _skip_lines(fd: int, count: int) -> int:
        """The offset just past the first `count` lines of the file (its end if it has fewer)."""
        at = 0
        while count > 0 and (data := os.pread(fd, CHUNK, at)):
            found = 0
            while count > 0 and (nl := data.find(b"\n", found)) >= 0:
                found, count = nl + 1, count - 1
            at += found if count == 0 else len(data)
        return at


def running(bus: Bus, tick_id: str) -> bool:
    """True while the tick is in claimed/ under a live owner (a dead owner's claim waits for the reaper)."""
    found = bus.whereis(tick_id)
    if found is None or found[0] is not Folder.CLAIMED:
        return False
    owner = Owner.parse(found[1].name[:-len(".json")].partition(CLAIM_SEP)[2])
    return owner is None or owner.is_alive()


def follow(layout: Layout, tick: Tick, sink_for: Callable[[Run], Sink], *, attempt: int | None = None,
           stderr: bool = False, on_run: Callable[[Run], None] = lambda run: None,
           sleep: Callable[[float], None] = time.sleep, poll: float = POLL_SECONDS) -> Run | None:
    """Show the tick's run (its last, or `attempt`) as its log grows, until the run is over: the tick has left
    claimed/ (or its owner died, or a later run started: then, without `attempt`, that run is shown on) and the log
    is read to its end. A tick in claimed/ whose run has no log yet is waited for. Returns the last run shown."""
    bus = Bus(layout)
    current: Run | None = None
    tail: Tail | None = None
    while True:
        live = running(bus, tick.id)  # looked at before the log is read: a run over by now is read to its end
        found = runs(layout, tick)
        latest = pick(found, None)
        chosen = latest if attempt is None else pick(found, attempt)
        if chosen is not None and (current is None or chosen.name != current.name):
            if tail is not None:
                tail.drain()
                tail.sink.close(settled=True)
            current = chosen
            on_run(current)
            path = current.stderr if stderr else current.stdout
            tail = Tail(path or layout.subsessions_dir / f"{current.name}.{'stderr' if stderr else 'stdout'}.log",
                        sink_for(current))
        if tail is not None:
            tail.drain()
        if not live or (current is not None and latest is not None and latest.name != current.name):
            break
        sleep(poll)
    if tail is not None:
        tail.sink.close(settled=True)
    return current


def page_transcript(path: Path, redactor: Redactor, *, settled: bool) -> list[Entry]:
    """A stdout log rendered for the run page: all of it up to PAGE_HEAD + PAGE_TAIL bytes, else its head and its
    tail; at most PAGE_ENTRIES display lines (the first PAGE_FIRST and the last of the rest), with a note where
    anything was left out."""
    first: list[Entry] = []
    last: deque[Entry] = deque(maxlen=PAGE_ENTRIES - PAGE_FIRST)
    dropped = 0

    def keep(entry: Entry) -> None:
        nonlocal dropped
        if len(first) < PAGE_FIRST:
            first.append(entry)
            return
        dropped += len(last) == last.maxlen
        last.append(entry)

    sink = Shown(keep, redactor)
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    skipped = 0
    if size <= PAGE_HEAD + PAGE_TAIL:
        show(path, sink, settled=settled)
    else:
        for data in chunks(path, 0, PAGE_HEAD):
            sink.feed(data)
        sink.reset()
        dropped += len(last)  # past PAGE_FIRST, the head's lines give way to the tail's
        last.clear()
        tail_at = size - PAGE_TAIL
        skipped = tail_at - PAGE_HEAD
        at_line = False
        for data in chunks(path, tail_at, size):
            if not at_line:  # the tail starts inside a line: from the next one on
                nl = data.find(b"\n")
                if nl < 0:
                    continue
                data, at_line = data[nl + 1:], True
            sink.feed(data)
        sink.close(settled=settled)
    if skipped or dropped:
        words = [f"{skipped:,} bytes of output not read"] if skipped else []
        words += [f"{dropped:,} display lines not shown"] if dropped else []
        first.append(Entry("note", f"[… {' and '.join(words)} here: `maestro tick log` shows them all …]"))
    return first + list(last)


def stderr_tail(path: Path, redactor: Redactor) -> list[Entry]:
    """The last STDERR_LINES lines of a stderr log (of its last STDERR_TAIL bytes), masked and cut."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return []
    lines: deque[Entry] = deque(maxlen=STDERR_LINES)
    sink = Plain(lines.append, redactor)
    start = max(0, size - STDERR_TAIL)
    data = b"".join(chunks(path, start, size))
    if start:
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    sink.feed(data)
    sink.close(settled=True)
    return list(lines)
