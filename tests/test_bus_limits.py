"""The bus's bounds: the backlog ceiling under racing enqueues, tick and history sizes, delays."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from maestro_py.bus.store import Bus
from maestro_py.bus.tick import HISTORY_MAX_BYTES, MAX_BASE_BYTES, MAX_TICK_BYTES, Tick
from maestro_py.bus.tickfile import parse_tick
from maestro_py.errors import InboxFull, TickInvalid
from maestro_py.paths import Folder, Layout
from tests.fakes import invoke, one_line_error, write_agent


def test_the_ceiling_is_exact_when_enqueues_race(layout: Layout, clock: Any) -> None:
    """Count-then-deliver used to race: 8 enqueues at 99 of 100 reached 107."""
    seed = Bus(layout, clock=clock, max_inbox=100)
    for _ in range(90):
        seed.enqueue("a")
    for round_ in range(3):
        racers = 16
        barrier = threading.Barrier(racers)
        outcomes: list[str] = []

        def racer() -> None:
            bus = Bus(layout, max_inbox=100)  # its own bus, as each `maestro enqueue` process has
            barrier.wait()
            try:
                bus.enqueue("a")
                outcomes.append("ok")
            except InboxFull:
                outcomes.append("full")

        threads = [threading.Thread(target=racer) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        depth = seed.depth(Folder.INBOX)
        assert depth == min(100, 90 + racers * (round_ + 1)) and depth <= 100
    assert list(layout.folder(Folder.TMP).iterdir()) == []


def test_enqueue_refuses_a_payload_that_leaves_no_room_for_history(layout: Layout, clock: Any) -> None:
    """Enqueue used to accept a 2 MiB payload that the daemon then quarantined as its own bad file."""
    bus = Bus(layout, clock=clock)
    with pytest.raises(TickInvalid, match="too large"):
        bus.enqueue("a", payload={"blob": "x" * (MAX_BASE_BYTES + 1)})
    assert bus.depth(Folder.INBOX) == 0 and list(layout.folder(Folder.TMP).iterdir()) == []
    bus.enqueue("a", payload={"blob": "x" * (MAX_BASE_BYTES - 1000)})  # just under: accepted


def test_the_cli_refuses_it_in_one_line_with_exit_2(tmp_path: Any, runner: Any) -> None:
    root = tmp_path / "agent"
    write_agent(root, prompts={"c": "hi"})
    big = json.dumps({"blob": "x" * (MAX_BASE_BYTES + 1)})
    result = invoke(runner, root, "enqueue", "c", "--payload", big)
    assert result.exit_code == 2 and "too large" in one_line_error(result)
    for delay in ("1e12", "inf", "nan", "-1"):
        result = invoke(runner, root, "enqueue", "c", "--delay", delay)
        assert result.exit_code == 2 and "--delay must be between 0 and" in one_line_error(result), delay


def test_history_stays_bounded_however_often_a_tick_is_requeued(clock: Any) -> None:
    """A tick requeued without burning attempts (auth, drain, disk) used to grow past 1 MiB and be quarantined."""
    tick = Tick.new("a", now=clock.now(), payload={"blob": "x" * (MAX_BASE_BYTES - 2000)})
    tick.record("enqueued", at=clock.now(), source="test")
    for n in range(400):
        tick.record("requeued", at=clock.now(), attempt=1, reason=f"drain {n}", tail="e" * 4096)
    data = tick.to_bytes()
    assert len(data) <= MAX_TICK_BYTES
    assert len(json.dumps(tick.history, ensure_ascii=False).encode()) <= HISTORY_MAX_BYTES
    assert tick.history[0]["outcome"] == "enqueued"            # how it began
    assert tick.history[1]["outcome"] == "history_elided" and tick.history[1]["count"] > 300
    assert tick.history[-1]["reason"] == "drain 399"           # the latest, whole
    assert len(tick.history[-1]["tail"]) == 4096
    again = parse_tick(data, stem=tick.id, fallback_time=clock.now())  # the daemon can read what it wrote
    assert again.history == tick.history


def test_a_hand_dropped_tick_too_big_for_its_history_is_quarantined_with_the_reason(clock: Any) -> None:
    doc = {"cadence": "a", "payload": {"blob": "x" * (MAX_BASE_BYTES + 10)}}
    with pytest.raises(TickInvalid, match="without its history"):
        parse_tick(json.dumps(doc).encode(), stem="20261123T120000000000Z-x", fallback_time=clock.now())
