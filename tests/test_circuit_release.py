"""`maestro circuit reset` releases the ticks the breaker held (issue 17, item 7), unless `--keep-backoff`."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.paths import Folder, Layout
from tests.fakes import (
    FakeClock, FakeSpawner, daemon_env, enqueue, events, invoke, maestro, make_daemon, read_json, run_steps,
    start_daemon, tick_ids, wait_for, write_agent,
)


@pytest.fixture
def now_clock() -> FakeClock:
    """A fake clock at the real time: the CLI compares retry times with its own clock."""
    return FakeClock(datetime.now(timezone.utc).replace(microsecond=0))


def _tripped(layout: Layout, clock: FakeClock) -> tuple[FakeSpawner, object, str]:
    """A cadence whose first failure opened its circuit: its tick waits 30 min in inbox/ (attempt 1 of 3)."""
    write_agent(layout, prompts={"flaky": "[[fake:500]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_CIRCUIT_THRESHOLD=1, MAESTRO_MAX_ATTEMPTS=3)
    [tick_id] = enqueue(layout, clock, "flaky")
    run_steps(daemon, 5)
    assert spawner.count == 1 and read_json(layout.circuit_file)["open"]["flaky"]["state"] == "open"
    waiting = read_json(layout.folder(Folder.INBOX) / f"{tick_id}.json")
    assert waiting["attempts"] == 1 and waiting["not_before"] is not None
    return spawner, daemon, tick_id


def test_reset_releases_the_tick_the_breaker_held(runner: CliRunner, layout: Layout, now_clock: FakeClock) -> None:
    """The user's steps: `circuit reset flaky` used to close the breaker and leave the tick 30 minutes away."""
    spawner, daemon, tick_id = _tripped(layout, now_clock)
    layout.prompt_file("flaky").write_text("fixed now")
    out = invoke(runner, layout.root, "circuit", "reset", "flaky")
    assert out.exit_code == 0, out.stderr
    assert "closed: flaky" in out.stdout and f"released 1 queued tick(s)" in out.stdout and tick_id in out.stdout
    queued = read_json(layout.folder(Folder.INBOX) / f"{tick_id}.json")
    assert queued["not_before"] is None and queued["attempts"] == 1
    entry = queued["history"][-1]
    assert entry["outcome"] == "released" and entry["reason"] == "circuit reset flaky by operator"
    assert entry["not_before_was"] is not None
    run_steps(daemon, 5)  # the daemon had indexed it with its old due time
    assert spawner.count == 2 and tick_ids(layout, Folder.DONE) == [tick_id]
    assert not layout.circuit_file.exists()


def test_keep_backoff_leaves_the_held_ticks_waiting(runner: CliRunner, layout: Layout, now_clock: FakeClock) -> None:
    spawner, daemon, tick_id = _tripped(layout, now_clock)
    before = read_json(layout.folder(Folder.INBOX) / f"{tick_id}.json")
    out = invoke(runner, layout.root, "circuit", "reset", "flaky", "--keep-backoff")
    assert out.exit_code == 0 and "1 queued tick(s) keep the retry times" in out.stdout
    assert read_json(layout.folder(Folder.INBOX) / f"{tick_id}.json") == before
    run_steps(daemon, 5)
    assert spawner.count == 1


def test_reset_leaves_ticks_that_were_delayed_on_purpose_and_other_cadences(
        runner: CliRunner, layout: Layout, now_clock: FakeClock) -> None:
    spawner, daemon, tick_id = _tripped(layout, now_clock)
    write_agent(layout, prompts={"flaky": "[[fake:500]]", "other": "write"})
    later = invoke(runner, layout.root, "enqueue", "flaky", "--delay", "3600").stdout.strip()
    out = invoke(runner, layout.root, "circuit", "reset", "other")
    assert out.exit_code == 0 and "released" not in out.stdout
    out = invoke(runner, layout.root, "circuit", "reset", "--all")
    assert tick_id in out.stdout and later not in out.stdout  # asked for at enqueue: not the breaker's doing
    assert read_json(layout.folder(Folder.INBOX) / f"{later}.json")["not_before"] is not None


def test_a_running_daemon_releases_the_cadence_and_its_backoff_at_once(tmp_path: Path) -> None:
    """With a real daemon: a backoff of 10 minutes and a breaker of 30 after one failure; a reset runs it now."""
    layout = write_agent(tmp_path / "agent", prompts={"flaky": "[[fake_claude:api_error:500]]"})
    env = daemon_env(tmp_path, MAESTRO_CIRCUIT_THRESHOLD=1, MAESTRO_BACKOFF_SECONDS=600, MAESTRO_MAX_ATTEMPTS=3,
                     MAESTRO_POLL_MS=200)
    daemon = start_daemon(layout, env)
    try:
        tick_id = maestro(layout, "enqueue", "flaky", env=env).stdout.strip()
        wait_for(lambda: layout.circuit_file.exists() and tick_ids(layout, Folder.INBOX) == [tick_id],
                 what="the breaker to open and the tick to be back in inbox/")
        layout.prompt_file("flaky").write_text("fixed now")
        out = maestro(layout, "circuit", "reset", "flaky", env=env)
        assert out.returncode == 0 and "released 1" in out.stdout, out.stderr
        wait_for(lambda: tick_ids(layout, Folder.DONE) == [tick_id], timeout=20, what="the released tick to run")
        assert not layout.circuit_file.exists()  # the daemon dropped the "released" key with the closed circuit
        history = read_json(layout.folder(Folder.DONE) / f"{tick_id}.json")["history"]
        assert [h["outcome"] for h in history] == ["enqueued", "failed", "released", "ok"]
        assert any(e["stage"] == "circuits_reloaded" for e in events(layout))
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


def test_after_a_circuit_reset_the_oldest_released_tick_runs_before_a_younger_one(tmp_path: Path) -> None:
    """FIFO per cadence: the tick the breaker held (older) runs before one queued behind it that was never tried, with
    a live daemon (the reset hands it the release through circuit-open.json)."""
    from maestro_py.daemon.lock import DaemonLock

    layout = write_agent(tmp_path / "agent", "[memo]\nmax_attempts = 5\n", {"memo": "[[fake:500]]"})
    clock = FakeClock(datetime.now(timezone.utc))
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_CIRCUIT_THRESHOLD=1, MAESTRO_CIRCUIT_OPEN_SECONDS=3600,
                         MAESTRO_BACKOFF_SECONDS="600")
    lock = DaemonLock(layout.lock_file, layout.root)
    lock.acquire()  # a live daemon, as the CLI sees it
    try:
        daemon.guardrails.credentials_verified = True
        [older] = enqueue(layout, clock, "memo")
        run_steps(daemon, 5)  # it fails: the breaker opens, the tick waits for its retry time
        clock.advance(5)
        [younger] = enqueue(layout, clock, "memo", payload={"x": 1})
        run_steps(daemon, 5)
        daemon._write_status(force=True)
        assert spawner.count == 1
        (layout.root / "cadences" / "memo.md").write_text("it works now")
        assert invoke(CliRunner(), layout.root, "circuit", "reset", "memo", env={"CLAUDE_BIN": "/bin/true"}).exit_code == 0
        run_steps(daemon, 10)
    finally:
        lock.release()
    ran = [older if older.encode() in s.spec.stdin else younger for s in spawner.sessions[1:]]
    assert ran == [older, younger]
