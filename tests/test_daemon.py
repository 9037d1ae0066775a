"""The daemon as a real process: `maestro run` over a real root, with a fake `claude` script."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from maestro_py.paths import Folder, Layout
from maestro_py.state import read_status
from tests.fakes import (
    SECRET, daemon_env, events, ledger_rows, maestro, read_json, spawns, start_daemon, tick_ids, wait_for,
    write_agent,
)


REGISTRY = """
[defaults]
timeout_seconds = 20

[beat]
mode = "inline"
handler = "noop"

[check]
mode = "guarded"
guard = "python3 -c 'import sys, json; sys.exit(0 if json.load(sys.stdin)[\\"payload\\"].get(\\"go\\") else 1)'"
"""


def test_run_once_runs_inline_guarded_and_escalated_ticks(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, REGISTRY, {"memo": "Write the memo.", "check": "Check the mail."})
    env = daemon_env(tmp_path)
    ids = {}
    for cadence, payload in [("beat", "{}"), ("check", "{}"), ("check", '{"go": true}'), ("memo", "{}")]:
        out = maestro(layout, "enqueue", cadence, "--payload", payload, "--source", "test", env=env)
        assert out.returncode == 0, out.stderr
        ids.setdefault(cadence, []).append(out.stdout.strip())
    run = maestro(layout, "run", "--once", env=env)
    assert run.returncode == 0, run.stderr
    assert sorted(tick_ids(layout, Folder.DONE)) == sorted(sum(ids.values(), []))
    done = {i: read_json(layout.folder(Folder.DONE) / f"{i}.json") for i in tick_ids(layout, Folder.DONE)}
    assert done[ids["beat"][0]]["history"][-1]["mode"] == "inline"
    assert done[ids["check"][0]]["history"][-1]["outcome"] == "nothing_to_do"
    assert done[ids["check"][1]]["history"][-1]["mode"] == "escalate"
    assert len(spawns(tmp_path)) == 2  # the escalated guard and the memo; never the inline ones
    rows = ledger_rows(layout)
    assert len(rows) == 2
    for row in rows:
        assert row["input_tokens"] == 1234 and row["output_tokens"] == 56
        assert row["cost_usd"] == pytest.approx(0.00757)
        assert row["exit_code"] == 0 and row["duration_ms"] >= 0 and row["session_id"]
    status = read_json(layout.consumer_file)
    assert status["counters"]["escalated"] == 2 and status["counters"]["inline"] == 2
    logs = list(layout.subsessions_dir.glob("*.stdout.log"))
    assert len(logs) == 2 and all(oct(p.stat().st_mode & 0o777) == "0o600" for p in logs)
    assert not list(layout.subsessions_dir.glob("*.stderr.log")), "empty stderr logs are deleted"


def test_run_once_leaves_future_ticks_queued(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "", {"memo": "Write the memo."})
    env = daemon_env(tmp_path)
    later = maestro(layout, "enqueue", "memo", "--delay", "3600", env=env).stdout.strip()
    now = maestro(layout, "enqueue", "memo", env=env).stdout.strip()
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    assert tick_ids(layout, Folder.DONE) == [now]
    assert tick_ids(layout, Folder.INBOX) == [later]


def test_api_failure_retries_then_dead_letters_with_the_error_text(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "", {"broken": "[[fake_claude:api_error:500]]"})
    env = daemon_env(tmp_path)
    tick = maestro(layout, "enqueue", "broken", env=env).stdout.strip()
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    assert tick_ids(layout, Folder.DLQ) == [tick]
    dead = read_json(layout.folder(Folder.DLQ) / f"{tick}.json")
    failures = [h for h in dead["history"] if h["outcome"] == "failed"]
    assert [h["attempt"] for h in failures] == [1, 2]
    assert all(h["api_error_status"] == 500 and h["exit_code"] == 1 for h in failures)
    assert "Internal server error" in dead["dlq_reason"]
    assert "Internal server error" in failures[0]["tail"]
    retry_events = [e for e in events(layout) if e["stage"] == "retry"]
    assert retry_events and "Internal server error" in retry_events[0]["tail"]
    assert len(spawns(tmp_path)) == 2
    assert all(row["cost_usd"] == 0 for row in ledger_rows(layout))  # the CLI reported $0 for API errors


def test_unknown_cadence_goes_to_dlq_at_once(layout: Layout, tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    tick = maestro(layout, "enqueue", "ghost", "--force", env=env).stdout.strip()
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    dead = read_json(layout.folder(Folder.DLQ) / f"{tick}.json")
    assert "no registry entry and no prompt file" in dead["dlq_reason"]


def test_unmetered_run_is_recorded_as_null_not_zero(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "", {"weird": "[[fake_claude:garbage]]"})
    env = daemon_env(tmp_path, MAESTRO_MAX_ATTEMPTS="1")
    maestro(layout, "enqueue", "weird", env=env)
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    (row,) = ledger_rows(layout)
    for key in ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"):
        assert row[key] is None


def test_secret_never_reaches_any_file_under_the_root(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "", {"leaky": "[[fake_claude:echo_env]]", "bad": "[[fake_claude:api_error:401]]"})
    env = daemon_env(tmp_path, CLAUDE_CODE_FAKE_ENV_KEYS="ANTHROPIC_API_KEY", MAESTRO_MAX_ATTEMPTS="1")
    maestro(layout, "enqueue", "leaky", env=env)
    maestro(layout, "enqueue", "bad", env=env)
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    assert maestro(layout, "status", "--json", env=env).returncode == 3  # ran once and exited: not running
    hits = [p for p in layout.root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert hits == []
    assert len(spawns(tmp_path)) == 2


def test_placeholder_key_is_stripped_from_the_child(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "", {"who": "[[fake_claude:echo_env]]"})
    keys = "ANTHROPIC_API_KEY,AGENT_DIR,CLAUDE_CODE_MAX_RETRIES,CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"
    env = daemon_env(tmp_path, ANTHROPIC_API_KEY="your-api-key-here", CLAUDE_CODE_FAKE_ENV_KEYS=keys)
    tick = maestro(layout, "enqueue", "who", env=env).stdout.strip()
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    (log,) = layout.subsessions_dir.glob("*.stdout.log")
    seen = json.loads(json.loads(log.read_text())["result"])
    assert seen == {"ANTHROPIC_API_KEY": None, "AGENT_DIR": str(layout.root), "CLAUDE_CODE_MAX_RETRIES": "2",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert tick_ids(layout, Folder.DONE) == [tick]


def test_second_daemon_refuses_naming_the_owner_and_no_stale_lock_after_kill9(layout: Layout, tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    first = start_daemon(layout, env)
    try:
        second = maestro(layout, "run", env=env, timeout=20)
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = maestro(layout, "run", "--once", env=env, timeout=20)
    assert third.returncode == 0, third.stderr


def test_idle_daemon_wakes_on_enqueue_without_waiting_for_the_poll(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "[beat]\nmode = 'inline'\nhandler = 'noop'\n", {})
    env = daemon_env(tmp_path, MAESTRO_POLL_MS="30000")
    proc = start_daemon(layout, env)
    try:
        wait_for(lambda: (read_status(layout) or {}).get("state") == "running", what="the daemon up and idle")
        tick = maestro(layout, "enqueue", "beat", env=env).stdout.strip()
        start = time.monotonic()
        wait_for(lambda: tick_ids(layout, Folder.DONE) == [tick], timeout=5, what="tick settled")
        assert time.monotonic() - start < 5  # far below the 30 s poll: the watchdog woke it
        cpu = psutil.Process(proc.pid).cpu_times()
        time.sleep(1.0)
        cpu2 = psutil.Process(proc.pid).cpu_times()
        assert (cpu2.user + cpu2.system) - (cpu.user + cpu.system) < 0.05  # idle: no busy polling
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_drains_then_requeues_without_burning_an_attempt(layout: Layout, tmp_path: Path, sig: int) -> None:
    """A hang-up drains like SIGTERM (it used to kill the daemon at once, the status left "running")."""
    write_agent(layout, "", {"slow": "[[fake_claude:sleep:30]]"})
    env = daemon_env(tmp_path, MAESTRO_STOP_GRACE_SECONDS="0.5")
    tick = maestro(layout, "enqueue", "slow", env=env).stdout.strip()
    proc = start_daemon(layout, env)
    wait_for(lambda: len(spawns(tmp_path)) == 1, what="spawn")
    child = int(spawns(tmp_path)[0].split()[0])
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 0
    assert read_json(layout.consumer_file)["state"] == "stopped"
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert tick_ids(layout, Folder.INBOX) == [tick]
    data = read_json(layout.folder(Folder.INBOX) / f"{tick}.json")
    assert data["attempts"] == 0
    assert data["history"][-1]["outcome"] == "requeued"


def test_emergency_stop_ends_running_work_and_spawns_nothing_until_resume(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "", {"slow": "[[fake_claude:sleep:30]]", "memo": "hello"})
    env = daemon_env(tmp_path)
    slow = maestro(layout, "enqueue", "slow", env=env).stdout.strip()
    proc = start_daemon(layout, env)
    try:
        wait_for(lambda: len(spawns(tmp_path)) == 1, what="spawn")
        assert maestro(layout, "stop", "--reason", "budget scare", env=env).returncode == 0
        wait_for(lambda: tick_ids(layout, Folder.INBOX) == [slow], what="requeue")
        memo = maestro(layout, "enqueue", "memo", env=env).stdout.strip()
        wait_for(lambda: read_json(layout.consumer_file)["queued"] == 2, what="the memo indexed")
        wait_for(lambda: read_json(layout.consumer_file)["counters"]["skipped_emergency_stop"] == 2,
                 what="both ticks held (each counted once, however many passes refuse it)")
        assert len(spawns(tmp_path)) == 1
        status = read_json(layout.consumer_file)
        assert status["emergency_stop"] == "budget scare"
        assert status["counters"]["skipped_emergency_stop"] == 2
        assert read_json(layout.folder(Folder.INBOX) / f"{slow}.json")["attempts"] == 0
        assert maestro(layout, "resume", env=env).returncode == 0
        # FIFO: the requeued slow tick is older than the memo, so it is the one that runs again.
        wait_for(lambda: len(spawns(tmp_path)) == 2, what="spawn after resume")
        assert spawns(tmp_path)[1].endswith("sleep")
        assert memo in tick_ids(layout, Folder.INBOX)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_timeout_ends_the_whole_tree_including_escaped_tools(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "[hung]\ntimeout_seconds = 1.5\nmax_attempts = 1\n", {"hung": "[[fake_claude:orphan]]"})
    pidfile = tmp_path / "tool.pid"
    env = daemon_env(tmp_path, CLAUDE_CODE_FAKE_PIDFILE=str(pidfile))
    tick = maestro(layout, "enqueue", "hung", env=env).stdout.strip()
    assert maestro(layout, "run", "--once", env=env, timeout=30).returncode == 0
    tool = int(pidfile.read_text())
    assert not psutil.pid_exists(tool) or psutil.Process(tool).status() == psutil.STATUS_ZOMBIE
    dead = read_json(layout.folder(Folder.DLQ) / f"{tick}.json")
    assert dead["history"][-1]["timed_out"] is True
    (row,) = ledger_rows(layout)
    assert row["cost_usd"] is None and row["input_tokens"] is None


def test_a_tick_written_in_place_by_a_slow_writer_runs_and_a_torn_one_is_quarantined(layout: Layout,
                                                                                     tmp_path: Path) -> None:
    """`(printf '{"cadence":'; sleep 1; printf '"beat"}') > inbox/x.json`: the daemon sees the file empty, then
    half written; it waits for the rest. A file left half written is quarantined once it stops changing."""
    write_agent(layout, "[beat]\nmode = 'inline'\nhandler = 'noop'\n", {})
    proc = start_daemon(layout, daemon_env(tmp_path, MAESTRO_POLL_MS="100"))
    inbox = layout.folder(Folder.INBOX)
    try:
        wait_for(lambda: (read_status(layout) or {}).get("state") == "running", what="the daemon up")
        (inbox / "torn.json").write_text('{"cadence": "be')
        with open(inbox / "slow.json", "w") as fh:
            fh.write('{"cadence":')
            fh.flush()
            time.sleep(1.0)  # ten polls, and the inotify event of the creation, while it is half written
            fh.write('"beat"}')
        wait_for(lambda: tick_ids(layout, Folder.DONE) == ["slow"], what="the slow tick done")
        wait_for(lambda: (layout.folder(Folder.DLQ) / "torn.json.reason.json").exists(), what="the torn one quarantined")
        assert "Unterminated string" in read_json(layout.folder(Folder.DLQ) / "torn.json.reason.json")["reason"]
        assert sorted(p.name for p in layout.folder(Folder.DLQ).iterdir()) == ["torn.json", "torn.json.reason.json"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
