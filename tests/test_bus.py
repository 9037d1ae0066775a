"""Bus semantics on real files: delivery, claim, settle, reap, quarantine, capacity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from maestro_py.bus.store import Bus
import maestro_py.bus.store as store_module
from maestro_py.errors import InboxFull
from maestro_py.bus.events import EventLog
from maestro_py.bus.owner import Owner
from maestro_py.paths import Folder, Layout
from tests.fakes import events, fail, names, read_json, reap, tick_ids


def claim_next(bus: Bus, index):
    index.refresh(force=True)
    index.promote(bus.clock.now())
    for head in index.heads():
        claim = bus.claim(head.name)
        if claim is not None:
            return claim
    return None


def test_enqueue_writes_one_complete_tick(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("inbox-processor", source="cron", payload={"k": 1})
    path = layout.folder(Folder.INBOX) / f"{tick.id}.json"
    data = read_json(path)
    assert data["id"] == tick.id and data["cadence"] == "inbox-processor"
    assert data["source"] == "cron" and data["payload"] == {"k": 1}
    assert data["attempts"] == 0 and data["not_before"] is None
    assert data["enqueued_at"].endswith("Z")
    assert data["history"][0]["outcome"] == "enqueued"
    assert names(layout, Folder.TMP) == []
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_ids_sort_by_enqueue_time_and_are_unique(bus: Bus, clock) -> None:
    ids = []
    for _ in range(50):
        ids.append(bus.enqueue("a").id)
        clock.advance(0.001)
    assert ids == sorted(ids)
    assert len(set(ids)) == 50


def test_claim_is_fifo_and_moves_to_claimed_with_owner(bus: Bus, layout: Layout, clock) -> None:
    first = bus.enqueue("a")
    clock.advance(1)
    second = bus.enqueue("b")
    index = bus.index
    claim = claim_next(bus, index)
    assert claim is not None and claim.tick.id == first.id
    assert claim.path.name == f"{first.id}@{bus.owner.token}.json"
    assert tick_ids(layout, Folder.INBOX) == [second.id]


def test_complete_moves_to_done_with_history(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("a")
    claim = claim_next(bus, bus.index)
    bus.complete(claim, "ok", duration_ms=12)
    assert tick_ids(layout, Folder.DONE) == [tick.id]
    assert names(layout, Folder.CLAIMED) == []
    done = read_json(layout.folder(Folder.DONE) / f"{tick.id}.json")
    assert done["history"][-1]["outcome"] == "ok"
    assert done["history"][-1]["attempt"] == 1
    assert done["history"][-1]["duration_ms"] == 12


def test_fail_retries_with_not_before_then_dead_letters(bus: Bus, layout: Layout, clock) -> None:
    tick = bus.enqueue("a")
    index = bus.index
    claim = claim_next(bus, index)
    assert fail(bus, claim, "boom", max_attempts=2, retry_at=clock.now() + timedelta(seconds=30)) == "retry"
    queued = read_json(layout.folder(Folder.INBOX) / f"{tick.id}.json")
    assert queued["attempts"] == 1 and queued["not_before"] is not None
    # Not runnable before its time.
    assert claim_next(bus, index) is None
    clock.advance(31)
    claim = claim_next(bus, index)
    assert claim is not None and claim.attempt == 2
    assert fail(bus, claim, "boom again", max_attempts=2) == "dlq"
    dead = read_json(layout.folder(Folder.DLQ) / f"{tick.id}.json")
    assert dead["attempts"] == 2
    assert "attempts exhausted (2/2)" in dead["dlq_reason"]
    assert [h["outcome"] for h in dead["history"]] == ["enqueued", "failed", "failed"]


def test_permanent_failure_goes_straight_to_dlq(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("a")
    claim = claim_next(bus, bus.index)
    assert fail(bus, claim, "400 bad request", max_attempts=5, permanent=True) == "dlq"
    assert tick_ids(layout, Folder.DLQ) == [tick.id]


def test_requeue_does_not_burn_an_attempt(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("a")
    claim = claim_next(bus, bus.index)
    bus.requeue(claim, "drain")
    data = read_json(layout.folder(Folder.INBOX) / f"{tick.id}.json")
    assert data["attempts"] == 0
    assert data["history"][-1]["outcome"] == "requeued"


def test_reap_returns_claims_of_dead_owners_only(layout: Layout, clock) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = Owner(dead.pid, 1)  # a pid with a start time that no live process has
    theirs = Bus(layout, clock=clock, owner=ghost)
    mine = Bus(layout, clock=clock)
    lost = theirs.enqueue("a")
    kept = theirs.enqueue("b")
    index = theirs.index
    claim_next(theirs, index)
    alive = Bus(layout, clock=clock, owner=Owner.current())
    claim_next(alive, index)  # claimed by a live owner (this process)
    mine.owner = Owner(os.getppid(), Owner.of(os.getppid()).started_cs)  # a different live process
    assert reap(mine) == [lost.id]
    assert tick_ids(layout, Folder.INBOX) == [lost.id]
    assert tick_ids(layout, Folder.CLAIMED) == [kept.id]
    data = read_json(layout.folder(Folder.INBOX) / f"{lost.id}.json")
    assert data["reaps"] == 1 and data["attempts"] == 0
    assert data["history"][-1]["outcome"] == "reaped"


def test_reaping_a_poison_tick_three_times_dead_letters_it(layout: Layout, clock) -> None:
    ghost = Owner(999_999, 1)
    bus = Bus(layout, clock=clock, owner=ghost)
    tick = bus.enqueue("a")
    reaper = Bus(layout, clock=clock)
    for _ in range(3):
        claim_next(bus, bus.index)
        reap(reaper)
    assert tick_ids(layout, Folder.DLQ) == [tick.id]
    assert "owner died 3 times" in read_json(layout.folder(Folder.DLQ) / f"{tick.id}.json")["dlq_reason"]


def test_reap_finishes_an_interrupted_move_without_duplicating(layout: Layout, clock) -> None:
    ghost = Owner(999_999, 1)
    bus = Bus(layout, clock=clock, owner=ghost)
    tick = bus.enqueue("a")
    claim = claim_next(bus, bus.index)
    # Simulate a crash after done/ was published but before the claimed copy was removed.
    saved = claim.path.read_bytes()
    bus.complete(claim)
    claim.path.write_bytes(saved)
    reap(Bus(layout, clock=clock))
    assert tick_ids(layout, Folder.DONE) == [tick.id]
    assert names(layout, Folder.CLAIMED) == [] and names(layout, Folder.INBOX) == []


def test_group_commit_renames_at_once_and_writes_the_done_events_after_one_sync(bus: Bus, layout: Layout,
                                                                              monkeypatch) -> None:
    ticks = [bus.enqueue("a") for _ in range(3)]
    index = bus.index
    syncs: list[int] = []
    real = store_module.sync_files
    monkeypatch.setattr(store_module, "sync_files", lambda files, folders: (syncs.append(1), real(files, folders)))
    inodes = [os.stat(layout.folder(Folder.INBOX) / t.filename).st_ino for t in ticks]
    with bus.group_commit():
        for _ in ticks:
            bus.complete(claim_next(bus, index), "ok")
        # Appended and renamed, not yet synced: no copy is left behind, and no event of the block is out.
        assert tick_ids(layout, Folder.DONE) == sorted(t.id for t in ticks)
        assert names(layout, Folder.CLAIMED) == [] and syncs == []
        assert [e for e in events(layout) if e["stage"] in ("claimed", "done")] == []
    assert syncs == [1]
    assert [e["stage"] for e in events(layout)][-6:] == ["claimed"] * 3 + ["done"] * 3  # one write, after the sync
    assert [e["id"] for e in events(layout) if e["stage"] == "done"] == [t.id for t in ticks]
    assert read_json(layout.folder(Folder.DONE) / f"{ticks[0].id}.json")["history"][-1]["outcome"] == "ok"
    # Rename-only: each tick is still the file (the inode) it was enqueued as; nothing was written under tmp/.
    assert [os.stat(layout.folder(Folder.DONE) / t.filename).st_ino for t in ticks] == inodes
    assert names(layout, Folder.TMP) == []


@pytest.mark.parametrize("torn", [b"", b'{"id": "cut sh'])
def test_reap_reruns_a_tick_whose_unsynced_done_copy_was_torn_by_a_crash(layout: Layout, clock, torn: bytes) -> None:
    ghost = Owner(999_999, 1)
    bus = Bus(layout, clock=clock, owner=ghost)
    tick = bus.enqueue("a")
    claim = claim_next(bus, bus.index)
    # A power cut after a group commit published the done copy but before its sync: the copy is empty or cut.
    (layout.folder(Folder.DONE) / f"{tick.id}.json").write_bytes(torn)
    assert reap(Bus(layout, clock=clock)) == [tick.id]
    assert tick_ids(layout, Folder.INBOX) == [tick.id] and names(layout, Folder.DONE) == []
    assert names(layout, Folder.CLAIMED) == [] and claim.tick.id == tick.id
    assert read_json(layout.folder(Folder.INBOX) / f"{tick.id}.json")["history"][-1]["outcome"] == "reaped"


def test_claim_reuses_the_index_parse_only_for_the_same_version_of_the_file(layout: Layout, clock) -> None:
    producer = Bus(layout, clock=clock)
    first, second = producer.enqueue("a"), producer.enqueue("a")
    bus = Bus(layout, clock=clock)  # the consumer finds them by a scan and keeps their parse for the claim
    bus.index.refresh(force=True)
    seen_first, seen_second = bus.index.parsed(first.filename), bus.index.parsed(second.filename)
    assert seen_first is not None and seen_second is not None
    # The second file is rewritten after the index read it (new inode): the claim must read it again.
    path = layout.folder(Folder.INBOX) / second.filename
    doc = read_json(path)
    doc["payload"] = {"changed": True}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    assert bus.claim(first.filename).tick is seen_first.tick
    claim = bus.claim(second.filename)
    assert claim.tick is not seen_second.tick and claim.tick.payload == {"changed": True}


def test_enqueue_at_capacity_refuses_and_leaves_nothing(layout: Layout, clock) -> None:
    bus = Bus(layout, clock=clock, max_inbox=3)
    for _ in range(3):
        bus.enqueue("a")
    before = names(layout, Folder.INBOX)
    with pytest.raises(InboxFull):
        bus.enqueue("a")
    assert names(layout, Folder.INBOX) == before
    assert names(layout, Folder.TMP) == []


def test_sweep_tmp_removes_only_old_leftovers(bus: Bus, layout: Layout, clock) -> None:
    old = layout.folder(Folder.TMP) / "old.tmp"
    new = layout.folder(Folder.TMP) / "new.tmp"
    old.write_text("x")
    new.write_text("y")
    past = clock.now().timestamp() - 7200
    os.utime(old, (past, past))
    os.utime(new, (clock.now().timestamp(), clock.now().timestamp()))
    assert bus.sweep_tmp(grace=3600) == 1
    assert names(layout, Folder.TMP) == ["new.tmp"]


def test_events_are_json_lines_with_required_fields(bus: Bus, layout: Layout) -> None:
    tick = bus.enqueue("a")
    claim = claim_next(bus, bus.index)
    bus.complete(claim)
    stages = [(e["stage"], e["id"]) for e in events(layout)]
    assert stages == [("enqueued", tick.id), ("claimed", tick.id), ("done", tick.id)]
    for event in events(layout):
        assert {"ts", "level", "stage", "id", "cadence"} <= event.keys()


# -- races and crashes ------------------------------------------------------

RACER = textwrap.dedent(
    """
    import sys, json
    from maestro_py.bus.store import Bus
    from maestro_py.paths import Layout
    bus = Bus(Layout(sys.argv[1]))
    index = bus.index
    got = []
    import time
    while True:
        index.refresh(force=True)
        index.promote(bus.clock.now())
        heads = list(index.heads())
        if not heads:
            break
        for head in heads:
            claim = bus.claim(head.name)
            if claim is not None:
                got.append(claim.tick.id)
    print(json.dumps(got))
    """
)


def test_two_processes_racing_claim_each_tick_exactly_once(layout: Layout, clock) -> None:
    bus = Bus(layout, clock=clock, max_inbox=10_000)
    cadences = ["a", "b", "c", "d"]
    ids = {bus.enqueue(cadences[i % 4]).id for i in range(2000)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(layout.root)], stdout=subprocess.PIPE,
                              cwd=Path(__file__).parent.parent) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    claimed = results[0] + results[1]
    assert len(claimed) == 2000
    assert set(claimed) == ids
    assert results[0] and results[1], "both racers should have won some claims"
    assert len(tick_ids(layout, Folder.CLAIMED)) == 2000


WRITER = textwrap.dedent(
    """
    import sys
    from maestro_py.bus.store import Bus
    from maestro_py.paths import Layout
    bus = Bus(Layout(sys.argv[1]), max_inbox=10**9)
    print("ready", flush=True)
    while True:
        bus.enqueue("writer", payload={"blob": "x" * 20000})
    """
)


def test_writer_killed_mid_write_leaves_nothing_half_visible(layout: Layout) -> None:
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(layout.root)], stdout=subprocess.PIPE,
                                cwd=Path(__file__).parent.parent)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.15)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    inbox = list(layout.folder(Folder.INBOX).iterdir())
    assert inbox, "the writer should have delivered some ticks"
    for path in inbox:
        data = json.loads(path.read_text())  # every visible tick is complete
        assert data["payload"]["blob"] == "x" * 20000
    # Half-written files may remain only in tmp/, and the sweep removes them after the grace period.
    bus = Bus(layout)
    bus.sweep_tmp(grace=-1)
    assert names(layout, Folder.TMP) == []


def test_event_log_moves_to_the_next_days_file_at_midnight(layout: Layout, clock) -> None:
    log = EventLog(layout, clock=clock)
    log.emit("one")
    clock.advance(86400)
    log.emit("two")
    files = sorted(layout.events_dir.glob("bus-*.jsonl"))
    assert len(files) == 2
    assert [json.loads(f.read_text())["stage"] for f in files] == ["one", "two"]


def test_event_listeners_get_each_event_masked_and_one_that_raises_is_ignored(layout: Layout) -> None:
    from maestro_py.bus.events import EventLog
    from maestro_py.redact import Redactor

    log = EventLog(layout, redactor=Redactor({"ANTHROPIC_API_KEY": "sk-ant-listener-secret-123"}))
    seen: list[dict] = []

    def broken(event: dict) -> None:
        raise RuntimeError("boom")

    log.listeners += [broken, seen.append]
    log.emit("auth_halt", level="error", reason="key sk-ant-listener-secret-123 refused")
    assert [(e["stage"], e["reason"]) for e in seen] == [("auth_halt", "key [REDACTED] refused")]


def test_event_listeners_get_an_unmasked_event_whole_and_a_masked_one_copied(layout: Layout) -> None:
    from maestro_py.bus.events import EventLog
    from maestro_py.redact import Redactor

    secret = 'sk-ant-quoted"secret\\x'
    log = EventLog(layout, redactor=Redactor({"ANTHROPIC_API_KEY": secret}))
    seen: list[dict] = []
    log.listeners.append(seen.append)
    log.emit("done", id="t1", cadence="beat", outcome="ok", n=3, nested={"list": ["a", 1]})
    log.emit("retry", id="t2", cadence="beat", reason=f"said {secret}", nested={"deep": [secret]})
    assert seen[0]["nested"] == {"list": ["a", 1]} and seen[0]["n"] == 3 and seen[0]["outcome"] == "ok"
    assert seen[1]["reason"] == "said [REDACTED]" and seen[1]["nested"] == {"deep": ["[REDACTED]"]}
    assert secret not in json.dumps(seen) and "quoted" not in json.dumps(seen[1])


def test_enqueued_is_logged_before_the_tick_can_be_claimed(bus: Bus, layout: Layout) -> None:
    visible_at_event: list[bool] = []
    bus.events.listeners.append(lambda e: visible_at_event.append(
        (layout.folder(Folder.INBOX) / f"{e['id']}.json").exists()) if e["stage"] == "enqueued" else None)
    tick = bus.enqueue("a")
    assert visible_at_event == [False]  # a consumer cannot have claimed it yet: `claimed` always comes after
    assert (layout.folder(Folder.INBOX) / tick.filename).exists()


def test_a_delivery_that_fails_after_its_enqueued_event_says_so(bus: Bus, layout: Layout, monkeypatch) -> None:
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "link", full)
    with pytest.raises(OSError):
        bus.enqueue("a")
    stages = [e["stage"] for e in events(layout)]
    assert stages[-2:] == ["enqueued", "enqueue_failed"] and names(layout, Folder.INBOX) == []
    assert names(layout, Folder.TMP) == []


def test_batched_events_across_midnight_go_to_each_day_s_file(layout: Layout, clock) -> None:
    log = EventLog(layout, clock=clock)
    local = clock.now().astimezone()
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    clock.advance((midnight - local).total_seconds() - 0.5)
    with log.batched():
        log.emit("one")
        assert list(layout.events_dir.glob("bus-*.jsonl")) == []  # held until the block ends
        clock.advance(1)
        log.emit("two")
    files = sorted(layout.events_dir.glob("bus-*.jsonl"))
    assert [[json.loads(line)["stage"] for line in f.read_text().splitlines()] for f in files] == [["one"], ["two"]]


def test_a_flush_inside_a_batch_writes_what_is_held_and_keeps_batching(layout: Layout, clock) -> None:
    log = EventLog(layout, clock=clock)
    with log.batched():
        log.emit("claimed")
        log.flush()  # before a handler that may block
        assert [e["stage"] for e in events(layout)] == ["claimed"]
        log.emit("done")
        assert [e["stage"] for e in events(layout)] == ["claimed"]
    assert [e["stage"] for e in events(layout)] == ["claimed", "done"]


def test_an_event_written_after_a_short_write_starts_on_a_line_of_its_own(layout: Layout, clock,
                                                                         monkeypatch) -> None:
    log = EventLog(layout, clock=clock)
    real = os.write
    monkeypatch.setattr("maestro_py.bus.events.os.write", lambda fd, data: real(fd, data[:10]))  # the disk fills
    log.emit("torn")
    monkeypatch.setattr("maestro_py.bus.events.os.write", real)
    log.emit("whole")
    assert [e["stage"] for e in events(layout, lenient=True)] == ["whole"] and log.failures == 1


def test_a_ledger_row_cut_short_by_a_full_disk_is_taken_back(tmp_path: Path, monkeypatch) -> None:
    from maestro_py.bus import fsio
    from maestro_py.session.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append({"n": 1})
    real, calls = os.write, []

    def filling(fd, data):  # a short write, then ENOSPC: how a disk fills mid-line
        calls.append(1)
        if len(calls) == 1:
            return real(fd, data[:7])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsio.os, "write", filling)
    with pytest.raises(OSError):
        ledger.append({"n": 2, "text": "x" * 100})
    monkeypatch.setattr(fsio.os, "write", real)
    ledger.append({"n": 3})
    assert [r["n"] for r in ledger.rows()] == [1, 3]
    assert all(line.startswith("{") for line in (tmp_path / "ledger.jsonl").read_text().splitlines())
