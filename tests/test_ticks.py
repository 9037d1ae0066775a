"""Operator commands on single ticks: shortened ids everywhere, `inbox list`, `tick show|cancel|retry-now`, and the
bus moves under them (a replaced inbox file is read again by a daemon that had indexed it)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from maestro_py.bus.events import EventLog
from maestro_py.bus.store import Bus
from maestro_py.errors import TickNotQueued
from maestro_py.ops import ticks
from maestro_py.paths import Folder, Layout
from tests.fakes import (
    FakeClock, FakeSpawner, fail, invoke, make_daemon, one_line_error, read_json, run_steps, tick_ids, write_agent,
)

HOSTILE = "\x1b]0;owned\x07API Error: 500\x1b[2J\r\x9b31m\u202eevil"


@pytest.fixture
def now_clock() -> FakeClock:
    """A fake clock at the real time: the CLI's own clock compares retry times against it."""
    return FakeClock(datetime.now(timezone.utc).replace(microsecond=0))


def _bus(layout: Layout, clock: FakeClock) -> Bus:
    return Bus(layout, clock=clock, events=EventLog(layout, clock=clock))


# -- ids ---------------------------------------------------------------------------------------------

def test_resolve_takes_the_id_a_prefix_the_log_suffix_or_a_log_file_name() -> None:
    ids = {"20261123T120000000001Z-0000001-00001111": "queued", "20261123T120000000002Z-0000001-0002aaaa": "done",
           "20261124T090000000003Z-0000002-0003bbbb": "dead_letter"}
    assert ticks.resolve("20261124", ids) == "20261124T090000000003Z-0000002-0003bbbb"
    assert ticks.resolve("02aaaa", ids) == "20261123T120000000002Z-0000001-0002aaaa"
    log = "logs/cadence-bus/subsessions/2026-11-23-memo-120001-a2-03bbbb.stdout.log"
    assert ticks.resolve(log, ids) == "20261124T090000000003Z-0000002-0003bbbb"
    assert ticks.resolve("120001-a1-001111", ids) == "20261123T120000000001Z-0000001-00001111"
    with pytest.raises(ticks.AmbiguousTickId) as ambiguous:
        ticks.resolve("20261123", ids)
    assert "(queued)" in str(ambiguous.value) and "(done)" in str(ambiguous.value)
    with pytest.raises(ticks.NoSuchTick):
        ticks.resolve("zzzzzz", ids)
    with pytest.raises(ticks.TickIdTooShort):
        ticks.resolve("202", ids)


def _dead_letter(layout: Layout, clock: FakeClock, reason: str = "API Error: 400") -> str:
    bus = _bus(layout, clock)
    tick = bus.enqueue("memo")
    claim = bus.claim(tick.filename)
    assert claim is not None
    fail(bus, claim, reason, max_attempts=1, permanent=True)
    return tick.id


def test_dlq_show_and_replay_take_the_six_characters_of_the_log_names(runner: CliRunner, layout: Layout,
                                                                      clock: FakeClock) -> None:
    """The user's steps (issue 17, item 11): a run's log is named `…-a1-<6 chars>`; those six are enough."""
    write_agent(layout, prompts={"memo": "write"})
    first, second = _dead_letter(layout, clock), _dead_letter(layout, clock)
    shown = invoke(runner, layout.root, "dlq", "show", first[-6:])
    assert shown.exit_code == 0 and first in shown.stdout
    ambiguous = invoke(runner, layout.root, "dlq", "show", first[:12])
    assert ambiguous.exit_code == 2
    line = one_line_error(ambiguous)
    assert "ambiguous" in line and first in line and second in line
    missing = invoke(runner, layout.root, "dlq", "replay", "ffffff")
    assert missing.exit_code == 1 and "no tick matches" in one_line_error(missing)
    replayed = invoke(runner, layout.root, "dlq", "replay", second[-6:])
    assert replayed.exit_code == 0, replayed.stderr
    assert tick_ids(layout, Folder.INBOX) == [second] and tick_ids(layout, Folder.DLQ) == [first]


# -- inbox list and tick show ------------------------------------------------------------------------

def test_inbox_list_shows_each_queued_tick_and_what_it_waits_for(runner: CliRunner, layout: Layout,
                                                                 now_clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    bus = _bus(layout, now_clock)
    ready = bus.enqueue("memo", source="cron")
    later = bus.enqueue("memo", delay=600, payload={"n": 1})
    listed = json.loads(invoke(runner, layout.root, "inbox", "list", "--json").stdout)
    assert [i["id"] for i in listed] == [ready.id, later.id]
    assert listed[0]["source"] == "cron" and listed[0]["not_before"] is None and not listed[0]["waiting"]
    assert listed[1]["waiting"] and listed[1]["wait"] == "delayed" and listed[1]["attempts"] == 0
    text = invoke(runner, layout.root, "inbox", "list").stdout
    local = datetime.fromisoformat(later.not_before.replace("Z", "+00:00")).astimezone()
    assert f"not before {local:%Y-%m-%d %H:%M:%S}" in text and "(in 10 min, delayed)" in text
    assert "2 queued" in text


def test_tick_show_prints_folder_attempts_history_escaped(runner: CliRunner, layout: Layout,
                                                           clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    tick_id = _dead_letter(layout, clock, reason=HOSTILE)
    shown = invoke(runner, layout.root, "tick", "show", tick_id[-6:])
    assert shown.exit_code == 0, shown.stderr
    assert f"tick {tick_id}: dead letter (dlq/)" in shown.stdout and "attempts: 1" in shown.stdout
    assert "enqueued" in shown.stdout and "API Error: 500" in shown.stdout
    assert not any(ch in shown.stdout for ch in "\x1b\x07\r\x9b\u202e")  # shown, never obeyed
    assert "\\x1b" in shown.stdout
    doc = json.loads(invoke(runner, layout.root, "tick", "show", tick_id, "--json").stdout)
    assert doc["folder"] == "dlq" and doc["dlq_reason"] == HOSTILE and len(doc["history"]) == 2


# -- cancel ------------------------------------------------------------------------------------------

def test_cancel_settles_a_queued_tick_in_done_with_an_audit_entry(runner: CliRunner, layout: Layout,
                                                                   clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    tick = _bus(layout, clock).enqueue("memo")
    out = invoke(runner, layout.root, "tick", "cancel", tick.id[-6:], "--reason", "wrong payload")
    assert out.exit_code == 0, out.stderr
    assert tick_ids(layout, Folder.INBOX) == [] and tick_ids(layout, Folder.DONE) == [tick.id]
    last = read_json(layout.folder(Folder.DONE) / tick.filename)["history"][-1]
    assert last["outcome"] == "cancelled" and last["reason"] == "wrong payload" and last["by"] == "operator"
    assert tick_ids(layout, Folder.DLQ) == []  # not a failure: `dlq replay --all` must not bring it back
    again = invoke(runner, layout.root, "tick", "cancel", tick.id)
    assert again.exit_code == 1 and "it is done" in one_line_error(again)


def test_a_running_tick_is_never_cancelled_or_released(runner: CliRunner, layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    bus = _bus(layout, clock)
    tick = bus.enqueue("memo")
    claim = bus.claim(tick.filename)
    assert claim is not None
    before = claim.path.read_bytes()
    for verb in ("cancel", "retry-now"):
        refused = invoke(runner, layout.root, "tick", verb, tick.id[-6:])
        assert refused.exit_code == 1
        assert "it is running now (claimed)" in one_line_error(refused)
    assert claim.path.read_bytes() == before and tick_ids(layout, Folder.DONE) == []


def test_a_claim_racing_a_cancel_wins_or_loses_cleanly(layout: Layout, clock: FakeClock) -> None:
    """The operator's move takes the tick by the same rename a claim does: never both."""
    write_agent(layout, prompts={"memo": "write"})
    daemon_bus, operator = _bus(layout, clock), _bus(layout, clock)
    first, second = daemon_bus.enqueue("memo"), daemon_bus.enqueue("memo")
    daemon_bus.index.refresh(force=True)
    operator.cancel(first.id)
    assert daemon_bus.claim(first.filename) is None  # it had indexed it: the claim loses, nothing runs
    assert daemon_bus.claim(second.filename) is not None
    with pytest.raises(TickNotQueued) as refused:
        operator.cancel(second.id)
    assert refused.value.state == "running"


# -- retry-now ---------------------------------------------------------------------------------------

def test_retry_now_runs_a_delayed_tick_at_the_next_loop_of_a_daemon_that_indexed_it(
        runner: CliRunner, layout: Layout, now_clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, now_clock, spawner)
    tick = _bus(layout, now_clock).enqueue("memo", delay=1800)
    run_steps(daemon, 5)
    assert spawner.count == 0  # indexed, with its due time half an hour away
    out = invoke(runner, layout.root, "tick", "retry-now", tick.id[:24])
    assert out.exit_code == 0, out.stderr
    queued = read_json(layout.folder(Folder.INBOX) / tick.filename)
    assert queued["not_before"] is None
    assert queued["history"][-1]["outcome"] == "released"
    assert queued["history"][-1]["not_before_was"] == tick.not_before
    run_steps(daemon, 5)
    assert spawner.count == 1 and tick_ids(layout, Folder.DONE) == [tick.id]
    nothing = invoke(runner, layout.root, "tick", "retry-now", tick.id)
    assert nothing.exit_code == 1 and "it is done" in one_line_error(nothing)


def test_retry_now_of_a_runnable_tick_changes_nothing(runner: CliRunner, layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    tick = _bus(layout, clock).enqueue("memo")
    before = (layout.folder(Folder.INBOX) / tick.filename).read_bytes()
    out = invoke(runner, layout.root, "tick", "retry-now", tick.id)
    assert out.exit_code == 0 and "not waiting" in out.stdout
    assert (layout.folder(Folder.INBOX) / tick.filename).read_bytes() == before


def test_the_index_reads_a_known_tick_again_when_its_file_is_replaced(layout: Layout, clock: FakeClock) -> None:
    """A wake-up event for a name the index knows (inotify's IN_MOVED_TO) is no longer ignored when the file is new."""
    bus = _bus(layout, clock)
    tick = bus.enqueue("memo", delay=600)
    index = _bus(layout, clock).index
    index.refresh(force=True)
    index.promote(clock.now())
    assert list(index.heads()) == []
    doc = tick.to_json()
    doc["not_before"] = None
    tmp = layout.folder(Folder.TMP) / "x"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, layout.folder(Folder.INBOX) / tick.filename)
    assert index.notice(tick.filename) == 1
    index.promote(clock.now())
    assert [e.name for e in index.heads()] == [tick.filename]
    assert index.notice(tick.filename) == 0  # the same file again: not read twice


def test_retry_now_says_which_gate_still_holds_the_cadence(runner: CliRunner, layout: Layout,
                                                           now_clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"}, files={".env": "CLAUDE_BIN=/bin/true\n"})
    tick = _bus(layout, now_clock).enqueue("memo", delay=600)
    assert invoke(runner, layout.root, "circuit", "open", "memo").exit_code == 0
    out = invoke(runner, layout.root, "tick", "retry-now", tick.id[-6:])
    assert out.exit_code == 0 and "it still waits: circuit_open" in out.stdout
