"""Settings edited in `.env` take effect in the running daemon (issue 17, item 1): a budget added while it
runs holds the next spawn, `status --json` agrees with itself, and the few settings that need a restart say so."""

from __future__ import annotations

import os
from pathlib import Path

from maestro_py.paths import Folder, Layout
from tests.fakes import FakeClock, FakeSpawner, enqueue, events, make_daemon, read_json, run_steps, tick_ids, write_agent

MEMO = '[memo]\nmode = "escalate"\n'


def edit_env(layout: Layout, text: str) -> None:
    layout.env_file.write_text(text)
    st = layout.env_file.stat()
    os.utime(layout.env_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime, surely


def test_a_budget_added_to_env_while_running_holds_the_next_spawn(tmp_path: Path, clock: FakeClock) -> None:
    layout = write_agent(tmp_path / "agent", MEMO, {"memo": "hi"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    daemon.guardrails.credentials_verified = True
    enqueue(layout, clock, "memo")
    run_steps(daemon, 3)
    assert spawner.count == 1
    base = "CLAUDE_BIN=/bin/true\nANTHROPIC_API_KEY=sk-ant-test-RELIABILITY-0123456789\nMAESTRO_MAX_ATTEMPTS=10\n"
    edit_env(layout, base + "MAESTRO_DAILY_USD_BUDGET=0.01\n")
    enqueue(layout, clock, "memo", payload={"second": True})
    run_steps(daemon, 3)
    assert spawner.count == 1  # $0.00757 spent + $0.00757 reserved (its last run) would pass $0.01: it waits
    assert daemon.counters["deferred_budget"] > 0 and len(tick_ids(layout, Folder.INBOX)) == 1
    daemon._write_status(force=True)
    status = read_json(layout.consumer_file)
    assert status["settings"]["MAESTRO_DAILY_USD_BUDGET"] == 0.01
    (daily,) = [r for r in status["budget"] if r["window"] == "daily"]
    assert daily["total"]["usd"] == 0.01  # what the daemon enforces is what status shows
    changed = [e for e in events(layout) if e["stage"] == "settings_changed"]
    assert changed and "MAESTRO_DAILY_USD_BUDGET" in changed[-1]["applied"]


def test_every_part_follows_a_changed_setting(tmp_path: Path, clock: FakeClock) -> None:
    layout = write_agent(tmp_path / "agent", MEMO, {"memo": "hi"})
    daemon = make_daemon(layout, clock, FakeSpawner())
    edit_env(layout, "MAESTRO_MAX_LIVE_SUBSESSIONS=4\nMAESTRO_MAX_INBOX=7\nMAESTRO_CIRCUIT_THRESHOLD=9\n"
                     "MAESTRO_MAX_ATTEMPTS=5\nMAESTRO_SPAWN_TIMEOUT_SECONDS=12\nMAESTRO_HOURLY_TOKEN_BUDGET=500\n"
                     "MAESTRO_BACKOFF_SECONDS=exp:1:10\n")
    run_steps(daemon, 1)
    # One new value, read by every part at its next use: nothing of it was written into them.
    assert (daemon.live.max_live, daemon.guardrails.max_live, daemon.settings.max_inbox) == (4, 4, 7)
    assert daemon.guardrails.breakers.figures()[0] == 9 and daemon.guardrails.max_attempts == 5
    assert daemon.dispatcher.settings().spawn_timeout == 12 and daemon.housekeeping.settings().spawn_timeout == 12
    assert daemon.budget.global_limits["hourly"].tokens == 500
    assert daemon.guardrails._default_wait() is not None and daemon.settings.backoff == "exp:1:10"


def test_settings_that_need_a_restart_say_so_and_a_bad_edit_keeps_what_runs(tmp_path: Path,
                                                                           clock: FakeClock) -> None:
    layout = write_agent(tmp_path / "agent", MEMO, {"memo": "hi"})
    daemon = make_daemon(layout, clock, FakeSpawner())
    edit_env(layout, f"MAESTRO_GOVERNOR_URL=sqlite:///{tmp_path}/g.db\nMAESTRO_MAX_ATTEMPTS=4\n")
    run_steps(daemon, 1)
    assert daemon.guardrails.max_attempts == 4 and daemon.settings.governor_url is None
    assert daemon.restart_required == ["MAESTRO_GOVERNOR_URL"]
    daemon._write_status(force=True)
    status = read_json(layout.consumer_file)
    assert status["restart_required"] == ["MAESTRO_GOVERNOR_URL"]
    assert status["settings"]["MAESTRO_GOVERNOR_URL"] is None  # in force: the one it started with
    assert [e["settings"] for e in events(layout) if e["stage"] == "restart_required"] == [["MAESTRO_GOVERNOR_URL"]]
    edit_env(layout, "MAESTRO_MAX_ATTEMPTS=zero\n")
    run_steps(daemon, 1)
    assert daemon.guardrails.max_attempts == 4
    bad = [e for e in events(layout) if e["stage"] == "env_invalid"]
    assert bad and "MAESTRO_MAX_ATTEMPTS" in bad[-1]["error"]
