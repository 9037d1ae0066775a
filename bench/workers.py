"""Comparator programs for bench/run.py, each run as its own process so every contender pays its own start-up.

    python bench/workers.py raw ROOT            the raw durable limit: our bus's per-tick file work, no logic
    python bench/workers.py raw-batch ROOT [K]  a design bound, not what the bus does: the same moves, but the done
                                                copy is not fsynced; instead every K ticks (16) one fsync of an
                                                append-only settle journal and one of done/ (group commit)
    python bench/workers.py dirq PATH [DONE]    dirq QueueSimple drain: lock + get + remove (+ a durable done
                                                record in DONE, written as our bus writes done/, when given)

The huey side needs no program here: bench/run.py writes a small module (HUEY_MODULE) and runs huey's own
`huey_consumer` on it.
"""

from __future__ import annotations

import os
import sys
import uuid


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_copy(data: bytes, tmp_dir: str, target: str) -> None:
    """What our bus does to publish a settled tick: write under tmp/, fsync, rename, fsync the folder."""
    tmp = os.path.join(tmp_dir, f"{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_dir(os.path.dirname(target))


def raw(root: str) -> int:
    """Per tick, exactly the file operations of claim + complete in maestro_py.bus, and nothing else.

    claim: rename inbox/<id>.json -> claimed/<id>@owner.json, read it;
    complete: write the done copy under tmp/ + fsync, rename into done/, fsync done/, unlink the claimed copy.
    Two fsyncs per tick, like the bus. No JSON, no index, no event log, no status file.
    """
    bus = os.path.join(root, "state", "cadence-bus")
    inbox, claimed, done, tmp = (os.path.join(bus, d) for d in ("inbox", "claimed", "done", "tmp"))
    names = sorted(os.listdir(inbox))
    for name in names:
        target = os.path.join(claimed, f"{name[:-5]}@raw.json")
        os.rename(os.path.join(inbox, name), target)
        fd = os.open(target, os.O_RDONLY)
        try:
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        _durable_copy(data, tmp, os.path.join(done, name))
        os.unlink(target)
    print(len(names))
    return 0


def raw_batch(root: str, batch: int = 16) -> int:
    """What a group-commit settle could reach: per tick the same renames and copy, fsyncs paid once per batch."""
    bus = os.path.join(root, "state", "cadence-bus")
    inbox, claimed, done, tmp = (os.path.join(bus, d) for d in ("inbox", "claimed", "done", "tmp"))
    journal = os.open(os.path.join(bus, "settle-journal.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    names = sorted(os.listdir(inbox))
    pending: list[bytes] = []
    for name in names:
        target = os.path.join(claimed, f"{name[:-5]}@raw.json")
        os.rename(os.path.join(inbox, name), target)
        fd = os.open(target, os.O_RDONLY)
        try:
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        tmp_path = os.path.join(tmp, f"{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp_path, os.path.join(done, name))
        os.unlink(target)
        pending.append(f'{{"id": "{name[:-5]}", "outcome": "ok"}}\n'.encode())
        if len(pending) >= batch:
            os.write(journal, b"".join(pending))
            os.fsync(journal)
            _fsync_dir(done)
            pending.clear()
    if pending:
        os.write(journal, b"".join(pending))
        os.fsync(journal)
        _fsync_dir(done)
    os.close(journal)
    print(len(names))
    return 0


def dirq(path: str, done: str | None = None) -> int:
    """Drain a dirq QueueSimple the documented way (lock, get, remove); optionally keep a durable done record."""
    from dirq.QueueSimple import QueueSimple

    queue = QueueSimple(path)
    tmp = os.path.join(done, "..", "tmp") if done else None
    count = 0
    for name in queue:
        if not queue.lock(name):
            continue
        data = queue.get(name)
        if done is not None and tmp is not None:
            _durable_copy(data, tmp, os.path.join(done, name.replace("/", "-")))
        queue.remove(name)
        count += 1
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
        return raw(argv[1])
    if len(argv) >= 2 and argv[0] == "raw-batch":
        return raw_batch(argv[1], int(argv[2]) if len(argv) > 2 else 16)
    if len(argv) >= 2 and argv[0] == "dirq":
        return dirq(argv[1], argv[2] if len(argv) > 2 else None)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
