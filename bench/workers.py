"""Comparator programs for bench/run.py, each run as its own process so every contender pays its own start-up.

    python bench/workers.py raw ROOT [K]        the raw durable limit: our bus's per-tick file work (bus v2:
                                                rename, read, append a record, rename) with the same group
                                                commit (one sync per K ticks, 64), and no logic
    python bench/workers.py raw-copy ROOT       the bus v1 file work (a done copy written under tmp/ per tick),
                                                same group commit: kept so the change is visible
    python bench/workers.py raw-per-tick ROOT   the v1 moves with an fsync pair per tick (the bus before
                                                group commit, kept for comparison)
    python bench/workers.py dirq PATH [DONE]    dirq QueueSimple drain: lock + get + remove (+ a durable done
                                                record in DONE, group-committed as our bus does, when given)

The huey side needs no program here: bench/run.py writes a small module (HUEY_MODULE) and runs huey's own
`huey_consumer` on it.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from maestro_py.bus.fsio import fsync_dir, sync_files  # noqa: E402 - the same primitives the bus uses
from maestro_py.daemon.dispatch import INLINE_BATCH  # noqa: E402

GROUP = INLINE_BATCH  # the daemon's group commit: one sync per this many inline ticks


def _copy(data: bytes, tmp_dir: str, target: str, *, durable: bool) -> None:
    """Publish a settled tick as our bus does: write under tmp/ (fsync if durable), rename (fsync the folder)."""
    tmp = os.path.join(tmp_dir, f"{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    if durable:
        fsync_dir(Path(target).parent)


class _Group:
    """Group commit as `Bus.group_commit` does it: after K settled ticks one sync, then drop the old copies."""

    def __init__(self, done: str, size: int) -> None:
        self.done, self.size = done, size
        self.pending: list[Callable[[], object]] = []

    def add(self, drop_old_copy: Callable[[], object]) -> None:
        self.pending.append(drop_old_copy)
        if len(self.pending) >= self.size:
            self.commit()

    def commit(self) -> None:
        if self.pending:
            sync_files([], [Path(self.done)])
            for drop in self.pending:
                drop()
            self.pending.clear()


def _drain(root: str, *, group: int | None) -> int:
    bus = os.path.join(root, "state", "cadence-bus")
    inbox, claimed, done, tmp = (os.path.join(bus, d) for d in ("inbox", "claimed", "done", "tmp"))
    names = sorted(os.listdir(inbox))
    batch = _Group(done, group) if group else None
    for name in names:
        target = os.path.join(claimed, f"{name[:-5]}@raw.json")
        os.rename(os.path.join(inbox, name), target)
        fd = os.open(target, os.O_RDONLY)
        try:
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        _copy(data, tmp, os.path.join(done, name), durable=batch is None)
        if batch is None:
            os.unlink(target)
        else:
            batch.add(lambda target=target: os.unlink(target))
    if batch is not None:
        batch.commit()
    print(len(names))
    return 0


# What `Bus.complete` appends for an inline noop tick (the size matters little: one write either way).
RECORD = (b'{"to": "done", "set": {}, "entry": {"attempt": 1, "at": "2026-12-06T12:00:00.000Z", "outcome": "ok", '
          b'"reason": null, "mode": "inline", "duration_ms": 0}}\n')


def raw(root: str, group: int = GROUP) -> int:
    """Per tick, exactly the file operations of claim + complete in maestro_py.bus.store (bus v2), nothing else.

    claim: rename inbox/<id>.json -> claimed/<id>@owner.json, read it;
    complete: append one record line (O_APPEND, one write), rename the file into done/; every `group` ticks
    one syncfs. No JSON, no index, no event log, no status file.
    """
    bus = os.path.join(root, "state", "cadence-bus")
    inbox, claimed, done = (os.path.join(bus, d) for d in ("inbox", "claimed", "done"))
    names = sorted(os.listdir(inbox))
    for i, name in enumerate(names, start=1):
        target = os.path.join(claimed, f"{name[:-5]}@raw.json")
        os.rename(os.path.join(inbox, name), target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, RECORD)
        finally:
            os.close(fd)
        os.rename(target, os.path.join(done, name))
        if i % group == 0 or i == len(names):
            sync_files([], [Path(done)])
    print(len(names))
    return 0


def raw_copy(root: str, group: int = GROUP) -> int:
    """The bus v1 file operations: claim as above; complete writes the done copy under tmp/, renames it into
    done/; every `group` ticks one syncfs, then unlink the claimed copies."""
    return _drain(root, group=group)


def raw_per_tick(root: str) -> int:
    """The same moves, each done copy made durable on its own (fsync it, rename, fsync done/), then unlink."""
    return _drain(root, group=None)


def dirq(path: str, done: str | None = None) -> int:
    """Drain a dirq QueueSimple the documented way (lock, get, remove); optionally keep a durable done record."""
    from dirq.QueueSimple import QueueSimple

    queue = QueueSimple(path)
    tmp = os.path.join(done, "..", "tmp") if done else None
    batch = _Group(done, GROUP) if done else None
    count = 0
    for name in queue:
        if not queue.lock(name):
            continue
        data = queue.get(name)
        if batch is not None and done is not None and tmp is not None:
            _copy(data, tmp, os.path.join(done, name.replace("/", "-")), durable=False)
            batch.add(lambda name=name: queue.remove(name))  # the element goes once its done record is synced
        else:
            queue.remove(name)
        count += 1
    if batch is not None:
        batch.commit()
    print(count)
    return 0


HUEY_MODULE = '''\
"""huey tasks for bench/run.py (written into a scratch folder, imported by huey_consumer and the producer)."""
import os
import time

from huey import SqliteHuey

# Default SqliteHuey (WAL, SQLite's default synchronous=FULL: a commit is durable). The producer may
# pre-fill with fsync off (BENCH_HUEY_PREFILL=1): pre-filling is fixture work, not what is measured.
huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"],
                  fsync=False if os.environ.get("BENCH_HUEY_PREFILL") else None)


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@huey.task()
def stamp(t_ns, i):
    now = time.time_ns()
    _append(os.environ["BENCH_STAMPS"], f"{i} {t_ns} {now}\\n")


@huey.task()
def noop(i):
    return None


@huey.task()
def marker():
    _append(os.environ["BENCH_MARKER"], f"{time.time_ns()}\\n")
'''

# The inline handler our daemon calls in the pickup benchmark (written into the agent root).
STAMP_HOOK = '''\
"""bench/run.py pickup handler: record when the daemon called us (it calls right after the claim)."""
import os
import time

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stamps.txt")


def stamp(tick):
    now = time.time_ns()
    payload = tick.get("payload") or {}
    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{payload.get('i')} {payload.get('t_ns')} {now}\\n".encode())
    finally:
        os.close(fd)
    return True
'''


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "raw":
        return raw(argv[1], int(argv[2]) if len(argv) > 2 else GROUP)
    if len(argv) >= 2 and argv[0] == "raw-copy":
        return raw_copy(argv[1])
    if len(argv) >= 2 and argv[0] == "raw-per-tick":
        return raw_per_tick(argv[1])
    if len(argv) >= 2 and argv[0] == "dirq":
        return dirq(argv[1], argv[2] if len(argv) > 2 else None)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
