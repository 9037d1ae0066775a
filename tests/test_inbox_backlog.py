"""A big backlog is listed at start-up, not read: files are read lazily, oldest first, as the picking reaches
them, and FIFO per cadence, delayed ticks and gate-held cadences behave as with everything read."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest

from maestro_py.bus import inbox as inbox_module
from maestro_py.bus.store import Bus
from maestro_py.bus.tick import Tick
from maestro_py.paths import Folder, Layout


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_module, "READ_BATCH", 8)
    monkeypatch.setattr(inbox_module, "READ_PER_PASS", 32)


def drop(layout: Layout, clock, cadence: str, *, delay: float = 0.0) -> Tick:
    """A tick written straight into inbox/ by another process (this bus's index does not know it)."""
    clock.advance(0.001)
    now = clock.now()
    tick = Tick.new(cadence, now=now, not_before=now + timedelta(seconds=delay) if delay else None)
    (layout.folder(Folder.INBOX) / tick.filename).write_bytes(tick.to_bytes())
    return tick


def counting_bus(layout: Layout, clock) -> tuple[Bus, list[str]]:
    bus = Bus(layout, clock=clock)
    reads: list[str] = []
    real = bus.index._inspect

    def inspect(name: str):
        reads.append(name)
        return real(name)

    bus.index._inspect = inspect
    return bus, reads


def test_start_up_lists_a_backlog_and_reads_only_a_batch(layout: Layout, clock) -> None:
    ticks = [drop(layout, clock, "a") for _ in range(200)]
    bus, reads = counting_bus(layout, clock)
    assert bus.index.refresh() == 8  # ticks read; the others are listed
    assert len(reads) == 8 and bus.index.unread == 192 and len(bus.index) == 200
    bus.index.promote(clock.now())
    head = next(bus.index.heads())
    assert head.name == ticks[0].filename and len(reads) == 8  # the oldest, read by the scan: no more reading
    assert bus.claim(head.name).tick.id == ticks[0].id


def test_draining_a_lazily_read_backlog_keeps_fifo_per_cadence_and_takes_each_tick_once(layout: Layout,
                                                                                         clock) -> None:
    dropped = [drop(layout, clock, "abc"[i % 3]) for i in range(300)]
    bus, reads = counting_bus(layout, clock)
    bus.index.refresh()
    claimed: dict[str, list[str]] = defaultdict(list)
    while True:
        bus.index.promote(clock.now())
        head = next(bus.index.heads(), None)
        if head is None:
            break
        claim = bus.claim(head.name)
        claimed[claim.tick.cadence].append(claim.tick.id)
        bus.complete(claim)
    for cadence in "abc":
        assert claimed[cadence] == [t.id for t in dropped if t.cadence == cadence]
    assert len(reads) == 300 and bus.index.unread == 0  # every file read once


def test_a_newer_tick_seen_at_once_waits_for_older_unread_ticks_of_any_cadence(layout: Layout, clock) -> None:
    older = [drop(layout, clock, "a") for _ in range(40)]
    bus, _ = counting_bus(layout, clock)
    bus.index.refresh()
    newer = drop(layout, clock, "a")
    bus.index.notice(newer.filename)  # a wake-up event: read at once
    bus.index.promote(clock.now())
    offered = [e.name for e in bus.index.heads()]
    assert offered == [older[0].filename]  # never the newer one before its elders


def test_a_cadence_held_by_its_gates_does_not_hide_a_later_cadence_for_long(layout: Layout, clock) -> None:
    for _ in range(100):
        drop(layout, clock, "held")
    free = drop(layout, clock, "free")
    bus, _ = counting_bus(layout, clock)
    bus.index.refresh()
    for passes in range(1, 10):  # each walk skips the held head, as the dispatcher does, and reads on
        bus.index.promote(clock.now())
        runnable = [e for e in bus.index.heads() if e.cadence != "held"]
        if runnable:
            break
    assert runnable[0].name == free.filename and passes <= 4


def test_a_delayed_tick_read_late_still_waits(layout: Layout, clock) -> None:
    for _ in range(20):
        drop(layout, clock, "a")
    later = drop(layout, clock, "b", delay=3600)
    bus, _ = counting_bus(layout, clock)
    bus.index.refresh()
    bus.index.promote(clock.now())
    assert all(e.cadence == "a" for e in bus.index.heads()) and bus.index.unread == 0
    assert bus.index.next_due() == pytest.approx(later.not_before_dt.timestamp())
    clock.advance(3601)
    bus.index.promote(clock.now())
    assert [e.name for e in bus.index.heads() if e.cadence == "b"] == [later.filename]
