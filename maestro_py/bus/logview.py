"""Reading the JSONL event log for `maestro logs`: filtering, the last N events, and `--follow`.

The log is `logs/cadence-bus/bus-YYYY-MM-DD.jsonl` (local date), plus monthly archives `bus-YYYY-MM.jsonl`
made by retention. Lines that are not JSON objects (a torn write) are skipped.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from maestro_py.clock import Clock, SystemClock, parse_iso
from maestro_py.paths import Layout

POLL_SECONDS = 0.2
LEVELS: Mapping[str, int] = {"debug": -1, "info": 0, "warn": 1, "warning": 1, "error": 2, "critical": 2}
VALUE_WIDTH = 160   # a longer value (a stderr tail, the counters) is cut; --json shows it whole
TAIL_BYTES = 1 << 20  # how much of a day's log `tail_lines` reads
HEAD_KEYS = ("ts", "level", "stage", "cadence", "id")

_FILE_RE = re.compile(r"^bus-(\d{4})-(\d{2})(?:-(\d{2}))?\.jsonl\Z")
_BARE = re.compile(r"^[^\s\"=]+\Z")


@dataclass(frozen=True)
class Event:
    """One event line: the raw text (for `--json`) and its parsed fields."""

    raw: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Filter:
    """Which events to show: a cadence, a tick id, a minimum level, a first time (all optional)."""

    cadence: str | None = None
    tick_id: str | None = None
    level: str | None = None
    since: datetime | None = None

    def matches(self, event: Mapping[str, Any]) -> bool:
        """True if the event passes every given criterion (`level` means that level and above)."""
        if self.cadence is not None and event.get("cadence") != self.cadence:
            return False
        if self.tick_id is not None and event.get("id") != self.tick_id:
            return False
        if self.level is not None and rank(event.get("level")) < rank(self.level):
            return False
        if self.since is not None:
            try:
                return parse_iso(str(event.get("ts"))) >= self.since
            except ValueError:
                return False  # no readable time: it cannot be said to be recent
        return True


def rank(level: Any) -> int:
    """The severity of a level name (info < warn < error); unknown levels count as info."""
    return LEVELS.get(str(level).lower(), 0)


def parse(line: str) -> Event | None:
    """An event from one line, or None if it is not a JSON object."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return Event(line.rstrip("\n"), data) if isinstance(data, dict) else None


def log_files(layout: Layout) -> list[Path]:
    """Every event log file, oldest first (a month's archive before that month's daily files)."""
    found: list[tuple[tuple[str, str, str], Path]] = []
    try:
        entries = list(os.scandir(layout.events_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _FILE_RE.match(entry.name)
        if match and entry.is_file():
            found.append(((match[1], match[2], match[3] or ""), Path(entry.path)))
    return [path for _, path in sorted(found)]


def _events(data: bytes, flt: Filter) -> Iterator[Event]:
    for line in data.decode("utf-8", errors="replace").splitlines():
        event = parse(line)
        if event is not None and flt.matches(event.data):
            yield event


def last(layout: Layout, flt: Filter, n: int | None, *, upto: Mapping[Path, int] | None = None) -> list[Event]:
    """The last `n` matching events (None: all of them), oldest first; `upto` caps how many bytes of a file are
    read. With `flt.since`, the files wholly older than it are not read."""
    if n is not None and n <= 0:
        return []
    picked: deque[Event] = deque()
    for path in reversed(log_files(layout)):  # newest file first: stop once there are enough
        if flt.since is not None and _ends_before(path, flt.since):
            break  # this file and every older one hold events from before --since only
        try:
            with open(path, "rb") as fh:
                data = fh.read(upto[path]) if upto and path in upto else fh.read()
        except FileNotFoundError:
            continue
        found = list(_events(data, flt))
        picked.extendleft(reversed(found if n is None else found[-(n - len(picked)):]))
        if n is not None and len(picked) >= n:
            break
    return list(picked)


def tail_lines(path: Path, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The complete lines of the last `max_bytes` of a file ([] if it is missing): recent events, read at a bounded
    cost however large the day's log has grown (the crash-loop check, a trigger failure already recorded)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > max_bytes else lines  # the first may be cut


def _ends_before(path: Path, since: datetime) -> bool:
    """True if every event of this daily file (local date) or monthly archive is older than `since`: its day, or
    month, ended a day before the local day of `since` began (the day's margin: a daemon may run in another zone
    than this command)."""
    match = _FILE_RE.match(path.name)
    if match is None:
        return False
    day = since.astimezone().date() - timedelta(days=1)
    year, month = int(match[1]), int(match[2])
    if match[3] is None:
        return (year, month) < (day.year, day.month)
    return (year, month, int(match[3])) < (day.year, day.month, day.day)


class _Tail:
    """New complete lines of one file, surviving truncation and replacement (a new inode restarts at 0)."""

    def __init__(self, path: Path, *, at_end: bool) -> None:
        self.path = path
        self.inode: int | None = None
        self.offset = 0
        if at_end:
            try:
                st = path.stat()
                self.inode, self.offset = st.st_ino, _complete(path, st.st_size)
            except FileNotFoundError:
                pass

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self.inode, self.offset = st.st_ino, 0
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return b""
        end = data.rfind(b"\n") + 1  # a line still being written waits for its newline
        self.offset += end
        return data[:end]


def _complete(path: Path, size: int) -> int:
    """The offset just after the last newline within the first `size` bytes."""
    with open(path, "rb") as fh:
        back = min(size, 65536)
        while back:
            fh.seek(size - back)
            chunk = fh.read(back)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return size - back + cut + 1
            if back == size:
                break
            back = min(size, back * 2)
    return 0


def follow(layout: Layout, flt: Filter, out: Callable[[Event], None], *, n: int | None = 50,
           clock: Clock | None = None, sleep: Callable[[float], None] = time.sleep,
           stop: Callable[[], bool] = lambda: False, poll: float = POLL_SECONDS) -> None:
    """Print the last `n` events (None: all, as with `--since`), then new ones as they are appended, across the
    daily file change.

    Yesterday's file is read too until a day has passed, so a line a writer appends to it just after
    midnight (it read the clock before) is still shown.
    """
    clock = clock or SystemClock()
    tails = {path: _Tail(path, at_end=True) for path in _days(layout, clock.now())}
    for event in last(layout, flt, n, upto={p: t.offset for p, t in tails.items()}):
        out(event)
    while True:
        wanted = _days(layout, clock.now())
        for path in sorted(tails):
            for event in _events(tails[path].read(), flt):
                out(event)
            if path not in wanted:
                del tails[path]
        for path in wanted:
            if path not in tails:  # a new day: its file is read from the start
                tails[path] = _Tail(path, at_end=False)
                for event in _events(tails[path].read(), flt):
                    out(event)
        if stop():
            return
        sleep(poll)


def _days(layout: Layout, now: datetime) -> list[Path]:
    local = now.astimezone()
    return [layout.event_log(local - timedelta(days=1)), layout.event_log(local)]


def format_event(event: Event) -> str:
    """`ts level stage cadence id key=value…`, long values cut to VALUE_WIDTH characters, nothing a terminal
    would act on (see `escape`)."""
    data = event.data
    head = [str(data.get("ts", "-")), f"{str(data.get('level', '-')):<5}", str(data.get("stage", "-")),
            str(data.get("cadence") or "-"), str(data.get("id") or "-")]
    rest = [f"{escape(str(key))}={_value(value)}" for key, value in data.items()
            if key not in HEAD_KEYS and value is not None]
    return " ".join([escape(h) for h in head] + rest)


def escape(text: str) -> str:
    """`text` fit for a terminal on one line: every character `str.isprintable` refuses (C0 and C1 controls
    such as ESC and BEL, DEL, newlines, tabs, bidi overrides) written as Python writes it in a repr (\\x1b, \\n)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _value(value: Any) -> str:
    # A run's output reaches events (a stderr tail, a dead letter's reason): JSON escapes only C0 controls,
    # so what it leaves (C1, DEL, bidi) is escaped too, and only printable text goes out bare.
    bare = isinstance(value, str) and _BARE.match(value) and value.isprintable()
    text = value if bare else escape(json.dumps(value, ensure_ascii=False, default=str))
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 1] + "…"
