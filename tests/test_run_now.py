"""`maestro run-now CADENCE`: enqueue, make it run with or without a daemon, follow it to its end with --wait
(real `maestro` processes and the fake claude)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maestro_py.paths import Folder, Layout
from tests.fakes import (
    SECRET, daemon_env, maestro, read_json, spawns, start_daemon, tick_ids, wait_for, write_agent,
)

REGISTRY = """
[memo]

[flaky]
max_attempts = 3

[slow]

[beat]
mode = "inline"
handler = "noop"
"""
PROMPTS = {"memo": "Write the memo.", "flaky": "[[fake_claude:api_error:500]]", "slow": "[[fake_claude:sleep:4]]"}


@pytest.fixture
def agent(tmp_path: Path) -> tuple[Layout, dict[str, str]]:
    layout = write_agent(tmp_path / "agent", REGISTRY, prompts=PROMPTS)
    return layout, daemon_env(tmp_path, MAESTRO_POLL_MS=200)


def test_without_a_daemon_it_runs_run_once_and_prints_the_result_tokens_and_cost(
        agent: tuple[Layout, dict[str, str]], tmp_path: Path) -> None:
    layout, env = agent
    out = maestro(layout, "run-now", "memo", "--payload", '{"to": "board"}', "--wait", env=env)
    assert out.returncode == 0, out.stderr
    assert "no daemon runs: running `maestro run --once` as a subprocess" in out.stderr
    [tick_id] = tick_ids(layout, Folder.DONE)
    assert out.stdout.startswith(f"ok: memo tick {tick_id}, attempt 1")
    assert "\nhi there\n" in out.stdout and "tokens: 1,290  cost: $0.0076 (claude-opus-4-8)" in out.stdout
    assert f"-a1-{tick_id[-6:]}.stdout.log" in out.stdout
    assert read_json(layout.folder(Folder.DONE) / f"{tick_id}.json")["payload"] == {"to": "board"}
    assert len(spawns(tmp_path)) == 1 and SECRET not in out.stdout + out.stderr


def test_with_a_running_daemon_it_follows_the_tick_the_daemon_runs(agent: tuple[Layout, dict[str, str]]) -> None:
    layout, env = agent
    daemon = start_daemon(layout, env)
    try:
        wait_for(lambda: maestro(layout, "status", env=env).returncode == 0, what="a healthy daemon")
        out = maestro(layout, "run-now", "memo", "--wait", env=env)
        assert out.returncode == 0, out.stderr
        assert "the daemon runs it at its next loop" in out.stderr and "run --once" not in out.stderr
        assert "hi there" in out.stdout
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


def test_a_failure_exits_non_zero_and_says_when_it_retries(agent: tuple[Layout, dict[str, str]], tmp_path: Path) -> None:
    layout, env = agent
    env["MAESTRO_BACKOFF_SECONDS"] = "600"
    out = maestro(layout, "run-now", "flaky", "--wait", env=env)
    assert out.returncode == 1
    assert "FAILED: flaky tick" in out.stdout and "HTTP 500" in out.stdout
    assert "attempt 1 failed; it retries at" in out.stdout and "maestro tick retry-now" in out.stdout
    assert len(tick_ids(layout, Folder.INBOX)) == 1 and len(spawns(tmp_path)) == 1
    # Attempts retried at once are followed to the dead letter.
    env["MAESTRO_BACKOFF_SECONDS"] = "0"
    (layout.root / "cadences.toml").write_text(REGISTRY.replace("max_attempts = 3", "max_attempts = 2"))
    assert maestro(layout, "tick", "cancel", tick_ids(layout, Folder.INBOX)[0], env=env).returncode == 0
    dead = maestro(layout, "run-now", "flaky", "--wait", env=env)
    assert dead.returncode == 1 and "dead_letter" in dead.stdout and "attempts exhausted (2/2)" in dead.stdout


def test_a_long_hold_refuses_before_queueing_and_a_timeout_exits_124(agent: tuple[Layout, dict[str, str]]) -> None:
    layout, env = agent
    assert maestro(layout, "circuit", "open", "memo", env=env).returncode == 0
    held = maestro(layout, "run-now", "memo", "--wait", env=env)
    assert held.returncode == 1 and "not queued: circuit_open" in held.stderr
    assert tick_ids(layout, Folder.INBOX) == []
    slow = maestro(layout, "run-now", "slow", "--wait", "--timeout", "1.5", env=env)
    assert slow.returncode == 124 and "still running after 1.5 s" in slow.stderr
    assert "subprocess keeps running" in slow.stderr
    wait_for(lambda: tick_ids(layout, Folder.DONE), timeout=20, what="the run to go on and finish")


def test_without_wait_it_returns_at_once_and_a_background_run_once_runs_it(
        agent: tuple[Layout, dict[str, str]]) -> None:
    layout, env = agent
    out = maestro(layout, "run-now", "beat", env=env)
    assert out.returncode == 0 and "started `maestro run --once` in the background" in out.stderr
    tick_id = out.stdout.strip()
    wait_for(lambda: tick_ids(layout, Folder.DONE) == [tick_id], what="the background run --once to run it")


def test_a_tick_merged_into_a_queued_twin_is_followed_through_it(agent: tuple[Layout, dict[str, str]]) -> None:
    layout, env = agent
    twin = maestro(layout, "enqueue", "memo", env=env).stdout.strip()
    out = maestro(layout, "run-now", "memo", "--wait", env=env)
    assert out.returncode == 0, out.stderr
    assert f"merged into {twin}" in out.stderr and out.stdout.startswith(f"ok: memo tick {twin}")
    unknown = maestro(layout, "run-now", "nosuch", env=env)
    assert unknown.returncode == 2 and "unknown cadence" in unknown.stderr
