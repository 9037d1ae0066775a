"""Hostile input: hypothesis throws bad files of 30 kinds at `inbox/` of a REAL running daemon while good
ticks flow. Every bad entry is quarantined beside a `.reason.json` (or, for a valid tick of an unknown
cadence, dead-lettered); every good tick settles in `done/`; the daemon keeps the same pid throughout; and
nothing outside the root is read (atime) or written (content, mtime, no new files)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from maestro_py.bus.store import REASON_SUFFIX
from maestro_py.bus.tick import CADENCE_RE, MAX_TICK_BYTES
from maestro_py.paths import Folder, Layout
from tests.fakes import REPO, daemon_env, read_json, wait_for, write_agent
from tests.torture.support import TORTURE_ENV, folder_ids, new_tick, status_pid

REGISTRY = """
[good]
mode = "inline"
handler = "noop"

[think]
overlap = "allow"
timeout_seconds = 30
"""


def shown(name: str) -> str:
    """How a file name appears in a quarantine note (undecodable bytes as \\xNN)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class Example:
    """What one hypothesis example dropped into the inbox and what each entry must become."""

    inbox: Path
    outside: Path
    prefix: str
    quarantine: list[str] = field(default_factory=list)   # names that must get a reason note
    maybe: list[str] = field(default_factory=list)        # may be quarantined or vanish (raced with us)
    dead_letter: list[str] = field(default_factory=list)  # valid ticks of an unknown cadence
    good: list[str] = field(default_factory=list)         # tick ids that must end in done/
    seq: itertools.count = field(default_factory=itertools.count)
    kinds: dict[str, str] = field(default_factory=dict)                 # name -> kind, for failure reports

    def names(self) -> set[str]:
        """Every inbox name this example created."""
        return {*self.quarantine, *self.maybe, *(f"{i}.json" for i in (*self.good, *self.dead_letter))}

    def name(self, suffix: str = ".json") -> str:
        return f"{self.prefix}-{next(self.seq)}{suffix}"

    def write(self, data: bytes, *, name: str | bytes | None = None, size: int | None = None) -> str:
        """Deliver a bad file whole (written aside, renamed in), so only its final form is ever seen."""
        name = name or self.name()
        staged = os.fsencode(self.outside.parent / "staging") + b"/" + os.fsencode(name)
        with open(staged, "wb") as fh:
            fh.write(data)
            if size is not None:
                fh.truncate(size)
        os.rename(staged, os.fsencode(self.inbox) + b"/" + os.fsencode(name))
        self.quarantine.append(os.fsdecode(name))
        return os.fsdecode(name)


def tick_json(**fields: Any) -> dict[str, Any]:
    doc = {"cadence": "good", "source": "hostile", "payload": {"k": 1}}
    doc.update(fields)
    return doc


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- the kinds of bad input ----------------------------------------------------------------------------

def garbage_bytes(ex: Example, draw) -> None:
    ex.write(b"\xff" + draw(st.binary(max_size=200)))  # 0xff never starts valid UTF-8


def truncated_json(ex: Example, draw) -> None:
    data = enc(tick_json(payload={"text": draw(st.text(max_size=50))}))
    ex.write(data[: draw(st.integers(0, data.rindex(b"}") - 1))])


def empty_file(ex: Example, draw) -> None:
    ex.write(b"")


def huge_file(ex: Example, draw) -> None:
    pad = "x" * (MAX_TICK_BYTES + draw(st.integers(1, 200_000)))
    ex.write(enc(tick_json(payload={"pad": pad})))


def sparse_gigabyte(ex: Example, draw) -> None:
    ex.write(enc(tick_json()), size=1 << 30)  # a sparse 1 GiB: the size check must come before any read


def deep_nesting(ex: Example, draw) -> None:
    depth = draw(st.sampled_from([33, 100, 5_000, 200_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    ex.write(b'{"cadence": "good", "payload": {"d": ' + (opener * depth).encode() + b"1" + (closer * depth).encode()
             + b"}}")


def nul_byte(ex: Example, draw) -> None:
    data = enc(tick_json())
    at = draw(st.integers(0, len(data)))
    ex.write(data[:at] + b"\x00" + data[at:])


WRONG_TYPES = [
    ("payload", "text"), ("payload", [1, 2]), ("payload", 7), ("attempts", "two"), ("attempts", -1),
    ("attempts", 1.5), ("attempts", True), ("source", 12), ("source", "s" * 201), ("history", {"a": 1}),
    ("history", [1, 2]), ("not_before", 5), ("not_before", "soon"), ("enqueued_at", 3),
    ("enqueued_at", "2026-13-01T00:00:00Z"), ("reaps", -2), ("reaps", "x"), ("id", 42), ("cadence", None),
    ("cadence", 3), ("cadence", ["good"]),
]


def wrong_type(ex: Example, draw) -> None:
    key, value = draw(st.sampled_from(WRONG_TYPES))
    ex.write(enc(tick_json(**{key: value})))


def not_an_object(ex: Example, draw) -> None:
    ex.write(enc(draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=10), st.integers(),
                                st.none(), st.booleans()))))


def missing_cadence(ex: Example, draw) -> None:
    doc = tick_json()
    del doc["cadence"]
    ex.write(enc(doc))


def traversal_cadence(ex: Example, draw) -> None:
    cadence = draw(st.sampled_from(["../../etc/passwd", "..", "/etc/passwd", "good/../../x", "./good", "~root",
                                    "good\n", "good\x00x", ""]))
    ex.write(enc(tick_json(cadence=cadence)))


def unicode_cadence(ex: Example, draw) -> None:
    cadence = draw(st.text(min_size=1, max_size=70).filter(lambda c: not CADENCE_RE.match(c)))
    ex.write(json.dumps(tick_json(cadence=cadence), ensure_ascii=draw(st.booleans())).encode("utf-8"))


def lone_surrogate(ex: Example, draw) -> None:
    """Valid JSON whose string holds an unpaired UTF-16 surrogate: it decodes, but cannot be written back."""
    where = draw(st.sampled_from(["payload", "source", "history"]))
    escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\udc80x"]))
    body = {"payload": f'"payload": {{"x": "{escape}"}}', "source": f'"source": "s{escape}"',
            "history": f'"history": [{{"note": "{escape}"}}]'}[where]
    ex.write(f'{{"cadence": "good", {body}}}'.encode())


def huge_integer(ex: Example, draw) -> None:
    digits = draw(st.integers(4_301, 50_000))  # over Python's int-to-str limit: json.loads raises ValueError
    ex.write(b'{"cadence": "good", "payload": {"n": ' + b"7" * digits + b"}}")


def id_mismatch(ex: Example, draw) -> None:
    ex.write(enc(tick_json(id=draw(st.sampled_from(["other", "../x", "a@b"])))))


def bom_or_trailing(ex: Example, draw) -> None:
    data = enc(tick_json())
    ex.write(draw(st.sampled_from([b"\xef\xbb\xbf" + data, data + b" trailing", data + data])))


def bad_name(ex: Example, draw) -> None:
    """Good content under a name that is not `<id>.json`."""
    tail = draw(st.sampled_from([".txt", "", ".json.tmp", ".JSON", ".json~", "\n.json", " .json"]))
    head = draw(st.sampled_from(["", ".hidden-", "-dash-", "sp ace-", "new\nline-", "t\u00efck-", "a@b-", "q'\"-"]))
    ex.write(enc(tick_json()), name=f"{head}{ex.name(tail)}")


def long_name(ex: Example, draw) -> None:
    # Stem over the 128-char id limit; from 244 bytes on, "<name>.reason.json" would exceed NAME_MAX (255).
    size = draw(st.one_of(st.integers(134, 255), st.sampled_from([243, 244, 255])))
    name = ex.name("")
    ex.write(enc(tick_json()), name=(name + "x" * size)[: size - 5] + ".json")


def undecodable_name(ex: Example, draw) -> None:
    raw = os.fsencode(ex.name("")) + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + b".json"
    ex.write(enc(tick_json()), name=raw)


def reason_suffixed_name(ex: Example, draw) -> None:
    ex.write(enc(tick_json()), name=ex.name(REASON_SUFFIX))


def symlink_to_passwd(ex: Example, draw) -> None:
    name = ex.name()
    os.symlink("/etc/passwd", ex.inbox / name)
    ex.quarantine.append(name)


def symlink_outside(ex: Example, draw) -> None:
    target = draw(st.sampled_from(["tick.json", "secret.txt", "dir", "missing.json", "loop"]))
    name = ex.name()
    os.symlink(ex.outside / target if target != "loop" else name, ex.inbox / name)
    ex.quarantine.append(name)


def hard_link_outside(ex: Example, draw) -> None:
    name = ex.name()
    os.link(ex.outside.parent / "linked" / "secret-linked.txt", ex.inbox / name)
    ex.quarantine.append(name)


def fifo(ex: Example, draw) -> None:
    name = ex.name()
    os.mkfifo(ex.inbox / name)
    ex.quarantine.append(name)


def directory(ex: Example, draw) -> None:
    name = ex.name()
    staged = ex.outside.parent / "staging" / name  # built aside, renamed in whole (the daemon is quick)
    os.mkdir(staged)
    if draw(st.booleans()):
        (staged / "inner.json").write_bytes(enc(tick_json()))
    os.rename(staged, ex.inbox / name)
    ex.quarantine.append(name)


def unix_socket(ex: Example, draw) -> None:
    name = ex.name()
    os.mknod(ex.inbox / name, stat.S_IFSOCK | 0o600)
    ex.quarantine.append(name)


def device_node(ex: Example, draw) -> None:
    if os.geteuid() != 0:
        return  # mknod of a device needs root; the other kinds still run
    name = ex.name()
    os.mknod(ex.inbox / name, stat.S_IFCHR | 0o600, os.makedev(1, draw(st.sampled_from([3, 5]))))  # null, zero
    ex.quarantine.append(name)


def vanishing(ex: Example, draw) -> None:
    """Listed (a watchdog event), gone before or while it is opened."""
    name = ex.name()
    (ex.inbox / name).write_bytes(b"not json")
    time.sleep(draw(st.sampled_from([0, 0.0005, 0.002])))
    try:
        os.unlink(ex.inbox / name)
    except FileNotFoundError:
        pass  # the daemon quarantined it first
    ex.maybe.append(name)


def swapped_for_directory(ex: Example, draw) -> None:
    """Unreadable-by-surprise: a file replaced by a directory between list and open (root ignores chmod 0)."""
    name = ex.name()
    (ex.inbox / name).write_bytes(b"not json")
    time.sleep(draw(st.sampled_from([0, 0.001])))
    try:
        os.unlink(ex.inbox / name)
    except FileNotFoundError:
        ex.maybe.append(name)  # quarantined as a file already
    os.mkdir(ex.inbox / name)
    ex.quarantine.append(name)


def unknown_cadence(ex: Example, draw) -> None:
    tick = new_tick(draw(st.from_regex(CADENCE_RE, fullmatch=True).filter(lambda c: c not in ("good", "think"))))
    os.rename(_staged(ex, tick.to_bytes()), ex.inbox / tick.filename)
    ex.dead_letter.append(tick.id)


def _staged(ex: Example, data: bytes) -> Path:
    path = ex.outside.parent / "staging" / f"{ex.prefix}-{next(ex.seq)}"
    path.write_bytes(data)
    return path


KINDS: dict[str, Callable[[Example, Any], None]] = {f.__name__: f for f in [
    garbage_bytes, truncated_json, empty_file, huge_file, sparse_gigabyte, deep_nesting, nul_byte, wrong_type,
    not_an_object, missing_cadence, traversal_cadence, unicode_cadence, lone_surrogate, huge_integer,
    id_mismatch, bom_or_trailing, bad_name, long_name, undecodable_name, reason_suffixed_name, symlink_to_passwd,
    symlink_outside, hard_link_outside, fifo, directory, unix_socket, device_node, vanishing,
    swapped_for_directory, unknown_cadence,
]}


# -- the world outside the root ----------------------------------------------------------------------

def fingerprint(path: Path, *, atime: bool) -> dict[str, tuple]:
    """Every entry under `path`: type, content hash, mtime (and atime) — a read or a write shows up here."""
    out = {}
    for entry in sorted(path.rglob("*")):
        st_ = entry.lstat()
        digest = _digest_noatime(entry) if stat.S_ISREG(st_.st_mode) else None
        out[str(entry.relative_to(path))] = (stat.S_IFMT(st_.st_mode), digest, st_.st_mtime_ns,
                                             st_.st_atime_ns if atime else None)
    return out


def _digest_noatime(path: Path) -> str:
    """Hash a file without touching its atime (O_NOATIME: we own it), so the check itself reads nothing."""
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    finally:
        os.close(fd)


class World:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.layout = write_agent(base / "agent", REGISTRY, {"think": "Think it over."})
        self.outside = base / "outside"
        (self.outside / "dir").mkdir(parents=True)
        (self.outside / "tick.json").write_bytes(enc(tick_json(source="outside")))  # tempting: a valid tick
        (self.outside / "secret.txt").write_text("top secret, never read me\n")
        (self.outside / "dir" / "inner.json").write_bytes(enc(tick_json()))
        # Hard links share the inode, so reading the link in inbox/ is allowed to touch its atime: own folder.
        (base / "linked").mkdir()
        (base / "linked" / "secret-linked.txt").write_text("linked secret\n")
        (base / "staging").mkdir()
        # Make any read visible under relatime: atime older than mtime is updated by the next read.
        for entry in self.outside.rglob("*"):
            st_ = entry.lstat()
            os.utime(entry, ns=(st_.st_mtime_ns - 10**12, st_.st_mtime_ns), follow_symlinks=False)
        env = daemon_env(base, **TORTURE_ENV, MAESTRO_MAX_LIVE_SUBSESSIONS=2, MAESTRO_POLL_MS=200,
                         MAESTRO_REAP_SECONDS=1)
        env.pop("CLAUDE_CODE_FAKE_COUNT")  # nothing may appear beside the root
        self.stderr = open(base / "daemon.stderr", "wb")
        self.outside_before = fingerprint(self.outside, atime=True)
        self.linked_before = fingerprint(base / "linked", atime=False)
        self.passwd_before = self.passwd()
        self.base_before = sorted(os.listdir(base))
        self.examples = itertools.count()
        self.proc = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(self.layout.root), "run"],
                                     env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.stderr)
        wait_for(lambda: status_pid(self.layout) == self.proc.pid or self.proc.poll() is not None,
                 what="daemon start")
        assert self.proc.poll() is None, self.stderr_text()

    @staticmethod
    def passwd() -> tuple:
        st_ = os.stat("/etc/passwd")
        return hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest(), st_.st_mtime_ns, st_.st_ino

    def status(self) -> dict[str, Any]:
        return json.loads(self.layout.consumer_file.read_text())

    def stderr_text(self) -> str:
        return (self.base / "daemon.stderr").read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.stderr.close()
        return code


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """One real daemon for the whole module: every example of every test lands in its inbox."""
    world = World(tmp_path_factory.mktemp("hostile"))
    yield world
    assert world.stop() == 0, world.stderr_text()
    assert "Traceback" not in world.stderr_text(), world.stderr_text()


def notes_by_name(layout: Layout) -> dict[str, list[dict[str, Any]]]:
    dlq = layout.folder(Folder.DLQ)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in os.listdir(dlq):
        if name.endswith(REASON_SUFFIX) and os.path.lexists(dlq / name[: -len(REASON_SUFFIX)]):
            note = json.loads((dlq / name).read_text())
            out.setdefault(note.get("name") or note["file"], []).append(note)
    return out


# No shrinking: the world is stateful (one daemon for all examples), so after a failure every later example
# fails too; the first failure's report (kinds, order, daemon stderr) is what to read.
HOSTILE = settings(deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(HOSTILE, max_examples=30)
@given(data=st.data())
def test_bad_files_are_quarantined_while_good_ticks_flow(world: World, data: st.DataObject) -> None:
    kinds = data.draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=6), label="kinds")
    throw_and_check(world, data, kinds)


@settings(HOSTILE, max_examples=3)
@given(data=st.data())
def test_every_kind_at_once(world: World, data: st.DataObject) -> None:
    """All 30 kinds in one burst (random order and variants), so none is left out by chance."""
    throw_and_check(world, data, sorted(KINDS))


def throw_and_check(world: World, data: st.DataObject, kinds: list[str]) -> Example:
    layout = world.layout
    inbox = layout.folder(Folder.INBOX)
    assert world.proc.poll() is None, f"the daemon died earlier: {world.stderr_text()[-3000:]}"
    ex = Example(inbox, world.outside, f"e{next(world.examples)}")
    goods = data.draw(st.lists(st.sampled_from(["good", "think"]), min_size=1, max_size=4), label="good ticks")
    plan: list[Callable[[], None]] = []
    for cadence in goods:
        def deliver(cadence: str = cadence) -> None:
            tick = new_tick(cadence, {"example": ex.prefix, "n": next(ex.seq)})
            os.rename(_staged(ex, tick.to_bytes()), inbox / tick.filename)
            ex.good.append(tick.id)
        plan.append(deliver)

    def throw(kind: str) -> None:
        before = ex.names()
        KINDS[kind](ex, data.draw)
        ex.kinds.update({name: kind for name in ex.names() - before})

    for kind in kinds:
        plan.append(lambda kind=kind: throw(kind))
    for step in data.draw(st.permutations(plan), label="order"):
        step()

    def settled() -> bool:
        if world.proc.poll() is not None:
            return True  # dead: report below
        notes = notes_by_name(layout)
        left = set(os.listdir(inbox)) & ex.names()
        return (set(ex.good) <= set(folder_ids(layout, Folder.DONE))
                and set(ex.dead_letter) <= set(folder_ids(layout, Folder.DLQ))
                and all(shown(n) in notes for n in ex.quarantine)
                and not left and not os.listdir(layout.folder(Folder.CLAIMED)))

    def unsettled() -> str:
        left = sorted(set(os.listdir(inbox)) & ex.names())
        missing = [(n, ex.kinds.get(n)) for n in ex.quarantine if shown(n) not in notes_by_name(layout)]
        return (f"still in inbox {left!r}; no reason note for {missing!r}; daemon alive: {world.proc.poll() is None}; "
                f"stderr: {world.stderr_text()[-3000:]}")

    wait_for(settled, timeout=20, what=f"example {ex.prefix} ({kinds}) to settle", explain=unsettled)

    assert world.proc.poll() is None, f"the daemon died: {world.stderr_text()[-3000:]}"
    assert status_pid(layout) == world.proc.pid
    notes = notes_by_name(layout)
    for name in ex.quarantine:
        for note in notes[shown(name)]:
            assert note["reason"] and note["from"] == "inbox", note
    for tick_id in ex.dead_letter:
        dead = read_json(layout.folder(Folder.DLQ) / f"{tick_id}.json")
        assert "unknown cadence" in dead["dlq_reason"]
    for tick_id in ex.good:
        done = read_json(layout.folder(Folder.DONE) / f"{tick_id}.json")
        assert done["history"][-1]["outcome"] == "ok"
    # Nothing outside the root was read, written, created or moved.
    assert fingerprint(world.outside, atime=True) == world.outside_before
    assert fingerprint(world.base / "linked", atime=False) == world.linked_before
    assert World.passwd() == world.passwd_before
    assert sorted(os.listdir(world.base)) == world.base_before
    return ex


@settings(HOSTILE, max_examples=1)
@given(data=st.data())
def test_final_check_the_daemon_survived_every_example_with_one_pid(world: World, data: st.DataObject) -> None:
    """Every kind at once into the module's one daemon, then: the pid it started with, its own status counting
    what it quarantined, no traceback — whether the other tests of the module ran before, after, or not at all."""
    before = world.status()["counters"]["quarantined"]
    ex = throw_and_check(world, data, sorted(KINDS))
    status = wait_for(lambda: (doc := world.status())["counters"]["quarantined"] >= before + len(ex.quarantine) and doc,
                      what=f"the status to count {len(ex.quarantine)} more quarantined entries")
    assert world.proc.poll() is None and status["pid"] == world.proc.pid
    text = world.stderr_text()
    assert "Traceback" not in text, text
    print(f"hostile input: daemon pid {world.proc.pid} quarantined {status['counters']['quarantined']} entries, "
          f"ran {status['counters']['succeeded']} good ticks, dead-lettered {status['counters']['dlq']}")
