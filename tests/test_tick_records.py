"""Bus v2's tick files: the tick on line 1, each later move appended as a record, then the file renamed.

Every move keeps the file (its inode); a torn last record loses that record, never the tick; a claimed file
whose record settled it finishes its move when its owner is gone; files stay under the size limit; older
single-object files read as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from maestro_py.bus.claim import Claim
from maestro_py.bus.owner import Owner
from maestro_py.bus.store import Bus
from maestro_py.bus.tick import MAX_TICK_BYTES
from maestro_py.bus.tickfile import encode_record, read_tick_file
from maestro_py.errors import TickInvalid
from maestro_py.paths import Folder, Layout
from tests.fakes import events, fail, names, read_json, reap, tick_ids

GHOST = Owner(999_999, 1)  # a claim owner that is not running


def claim_one(bus: Bus) -> Claim:
    bus.index.refresh(force=True)
    bus.index.promote(bus.clock.now())
    for head in bus.index.heads():
        claim = bus.claim(head.name)
        if claim is not None:
            return claim
    raise AssertionError("nothing to claim")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_every_move_appends_one_record_to_the_same_file(bus: Bus, layout: Layout, clock) -> None:
    tick = bus.enqueue("a", payload={"k": 1})
    inode = os.stat(layout.folder(Folder.INBOX) / tick.filename).st_ino
    fail(bus, claim_one(bus), "boom", max_attempts=3)
    bus.requeue(claim_one(bus), "draining")
    bus.complete(claim_one(bus), "ok", cost_usd=0.01)
    path = layout.folder(Folder.DONE) / tick.filename
    assert os.stat(path).st_ino == inode and names(layout, Folder.TMP) == []
    first, *records = lines(path)
    assert first["id"] == tick.id and first["attempts"] == 0  # line 1 is the tick as enqueued
    assert [(r["to"], r["entry"]["outcome"]) for r in records] == [("inbox", "failed"), ("inbox", "requeued"),
                                                                   ("done", "ok")]
    assert records[0]["set"] == {"attempts": 1, "not_before": None}
    assert records[-1]["set"] == {"attempts": 2}  # the success was its second attempt (the requeue did not count)
    folded = read_json(path)
    assert folded["attempts"] == 2 and folded["payload"] == {"k": 1}
    assert [h["outcome"] for h in folded["history"]] == ["enqueued", "failed", "requeued", "ok"]


def test_dead_letter_record_carries_the_reason(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("a")
    assert fail(bus, claim_one(bus), "bad request", max_attempts=3, permanent=True) == "dlq"
    path = layout.folder(Folder.DLQ) / tick.filename
    assert lines(path)[-1]["set"]["dlq_reason"] == "bad request"
    dead = read_tick_file(path, tick.id)[0]
    assert (dead.attempts, dead.dlq_reason) == (1, "bad request") and dead.dlq_at
    assert [d["reason"] for d in bus.dead_letters()] == ["bad request"]
    replayed = bus.replay(tick.id)
    assert replayed.dlq_reason is None
    assert read_json(layout.folder(Folder.INBOX) / tick.filename).get("dlq_reason") is None


def test_a_torn_last_record_loses_that_record_never_the_tick(bus: Bus, layout: Layout, clock) -> None:
    tick = bus.enqueue("a", payload={"text": "héllo ✓"})
    fail(bus, claim_one(bus), "first failure", max_attempts=5)
    fail(bus, claim_one(bus), "second failure — with ✓ non-ASCII", max_attempts=5)
    path = layout.folder(Folder.INBOX) / tick.filename
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(last_start, len(data) + 1):  # a power cut mid-append, at every byte of the last record
        path.write_bytes(data[:cut])
        read, _ = read_tick_file(path, tick.id)
        whole = cut == len(data)
        assert read.attempts == (2 if whole else 1), cut
        assert [h["outcome"] for h in read.history][-1] == "failed" and len(read.history) == (3 if whole else 2)
        assert read.torn == (0 if whole or cut == last_start else cut - last_start)
    # Zeros where the last record should be (a file extended but its data lost): the same.
    path.write_bytes(data[:last_start] + b"\x00" * 40)
    assert read_tick_file(path, tick.id)[0].attempts == 1


def test_the_next_append_cuts_a_torn_record_off_first(bus: Bus, layout: Layout, clock) -> None:
    tick = bus.enqueue("a")
    fail(bus, claim_one(bus), "boom", max_attempts=5)
    path = layout.folder(Folder.INBOX) / tick.filename
    path.write_bytes(path.read_bytes() + b'{"to": "done", "set": {}, "entry": {"outc')  # torn by a crash
    bus.reindex()
    bus.complete(claim_one(bus), "ok")
    done = layout.folder(Folder.DONE) / tick.filename
    assert [h["outcome"] for h in read_json(done)["history"]] == ["enqueued", "failed", "ok"]
    assert all(line.startswith(b"{") for line in done.read_bytes().splitlines())  # no torn bytes mid-file


def test_a_bad_record_before_the_last_line_is_quarantined(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("a")
    path = layout.folder(Folder.INBOX) / tick.filename
    path.write_bytes(path.read_bytes() + b'{"to": "nowhere", "entry": {}}\n')
    with pytest.raises(TickInvalid, match="record on line 2"):
        read_tick_file(path, tick.id)
    path.write_bytes(path.read_bytes() + b'{"to": "done", "set": {"id": "other"}, "entry": {}}\n')
    with pytest.raises(TickInvalid, match="not a tick record"):
        read_tick_file(path, tick.id)


@pytest.mark.parametrize("to", [Folder.DONE, Folder.DLQ])
def test_reaper_finishes_a_settling_move_cut_between_append_and_rename(layout: Layout, clock, to: Folder) -> None:
    ghost_bus = Bus(layout, clock=clock, owner=GHOST)
    tick = ghost_bus.enqueue("a")
    claim = claim_one(ghost_bus)
    # The dead owner appended its settling record, then died before the rename.
    entry = {"attempt": 1, "at": "2026-11-23T12:00:00.000Z", "outcome": "ok" if to is Folder.DONE else "dead_letter"}
    changes = {} if to is Folder.DONE else {"dlq_reason": "gave up", "dlq_at": "2026-11-23T12:00:00.000Z"}
    with open(claim.path, "ab") as fh:
        fh.write(encode_record(to.value, entry, changes))
    assert reap(Bus(layout, clock=clock)) == []
    assert tick_ids(layout, to) == [tick.id] and names(layout, Folder.CLAIMED) == []
    assert read_json(layout.folder(to) / tick.filename)["history"][-1]["outcome"] == entry["outcome"]
    assert [e["to"] for e in events(layout) if e["stage"] == "move_finished"] == [to.value]


def test_an_earlier_retry_record_does_not_spare_a_crashing_tick_its_reap_count(layout: Layout, clock) -> None:
    tick = Bus(layout, clock=clock).enqueue("a")
    for expected in (1, 2):
        ghost_bus = Bus(layout, clock=clock, owner=GHOST)
        fail(ghost_bus, claim_one(ghost_bus), "boom", max_attempts=10)  # last record: "to": "inbox"
        claim_one(Bus(layout, clock=clock, owner=GHOST))               # claimed again, then its owner died
        assert reap(Bus(layout, clock=clock)) == [tick.id]
        assert read_json(layout.folder(Folder.INBOX) / tick.filename)["reaps"] == expected


def test_a_file_near_the_size_limit_is_compacted_not_grown_past_it(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("a", payload={"blob": "x" * (MAX_TICK_BYTES - 70_000)})
    path = layout.folder(Folder.INBOX) / tick.filename
    inodes = set()
    for n in range(40):
        fail(bus, claim_one(bus), "long reason " + "y" * 3000, max_attempts=1000)
        assert path.stat().st_size <= MAX_TICK_BYTES
        inodes.add(path.stat().st_ino)
    read, _ = read_tick_file(path, tick.id)
    assert read.attempts == 40 and len(inodes) > 1  # rewritten (compacted) when the next record would not fit
    assert any(h["outcome"] == "history_elided" for h in read.history)


def test_a_single_object_file_of_an_older_version_still_moves(bus: Bus, layout: Layout) -> None:
    path = layout.folder(Folder.INBOX) / "20261123T120000000000Z-legacy.json"
    path.write_text(json.dumps({"id": path.stem, "cadence": "a", "source": "cron", "attempts": 1,
                                "history": [{"attempt": 0, "at": "2026-11-23T12:00:00Z", "outcome": "enqueued"}]},
                               indent=2))
    bus.complete(claim_one(bus), "ok")
    done = read_json(layout.folder(Folder.DONE) / path.name)
    assert done["attempts"] == 2 and [h["outcome"] for h in done["history"]] == ["enqueued", "ok"]  # 1 failed, then 1 ok


def test_a_claimed_file_torn_at_every_byte_of_its_settling_record_is_never_lost(tmp_path: Path, clock) -> None:
    """A power cut mid-append, at each byte offset of the record a dead owner was appending: the reaper either
    finishes the move (the record is whole) or runs the tick again (it is not), and the tick ends in done/
    with a history that reads back, no torn bytes left inside the file."""
    layout = Layout(tmp_path / "seed")
    layout.root.mkdir()
    layout.ensure()
    ghost_bus = Bus(layout, clock=clock, owner=GHOST)
    tick = ghost_bus.enqueue("a", payload={"text": "ünïcode ✓"})
    claim = claim_one(ghost_bus)
    base = claim.path.read_bytes()
    record = encode_record("done", {"attempt": 1, "at": "2026-11-23T12:00:00.000Z", "outcome": "ok",
                                    "reason": "ünïcode ✓"})
    for cut in range(len(record) + 1):
        lay = Layout(tmp_path / f"cut{cut}")
        lay.root.mkdir()
        lay.ensure()
        held = lay.folder(Folder.CLAIMED) / claim.path.name
        held.write_bytes(base + record[:cut])
        bus = Bus(lay, clock=clock)
        reap(bus)
        if cut == len(record):
            assert tick_ids(lay, Folder.DONE) == [tick.id], cut  # the whole record: its move is finished
        else:
            assert tick_ids(lay, Folder.INBOX) == [tick.id], cut  # run again
            bus.complete(claim_one(bus), "ok")
        done = lay.folder(Folder.DONE) / tick.filename
        history = read_json(done)["history"]
        assert history[0]["outcome"] == "enqueued" and history[-1]["outcome"] == "ok", cut
        assert all(line.startswith(b"{") and line.endswith(b"}") for line in done.read_bytes().splitlines()), cut
        assert names(lay, Folder.CLAIMED) == [] and names(lay, Folder.TMP) == []
