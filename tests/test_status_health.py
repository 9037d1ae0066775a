"""`maestro status` tells scripts the truth: exit 0 only for a live daemon with a fresh heartbeat, 3 when none
runs, 4 when one holds the root but has gone quiet (SIGSTOP past the stale limit); `--wait-healthy` waits."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from maestro_py.daemon.status import EX_HEALTHY, EX_NOT_RUNNING, EX_STALE, health, stale_after
from tests.fakes import daemon_env, maestro, start_daemon, write_agent


def test_exit_codes_for_a_live_a_stopped_and_a_dead_daemon(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", "", {"memo": "hi"})
    env = daemon_env(tmp_path, MAESTRO_POLL_MS=100)
    none = maestro(layout, "status", env=env)
    assert none.returncode == EX_NOT_RUNNING and "daemon: not running" in none.stdout
    proc = start_daemon(layout, env)
    try:
        alive = maestro(layout, "status", "--wait-healthy", "10", env=env)
        assert alive.returncode == EX_HEALTHY and "daemon: alive (pid" in alive.stdout
        proc.send_signal(signal.SIGSTOP)
        # The stale limit is 3 × poll (at least 1 s) + 30 s: pretend the heartbeat was written long ago.
        doc = json.loads(layout.consumer_file.read_text())
        doc["heartbeat"] = "2020-01-01T00:00:00.000Z"
        layout.consumer_file.write_text(json.dumps(doc))
        stale = maestro(layout, "status", "--json", env=env)
        assert stale.returncode == EX_STALE
        assert json.loads(stale.stdout)["daemon"]["health"].startswith("STALE: pid")
        waited = time.monotonic()
        assert maestro(layout, "status", "--wait-healthy", "1", env=env).returncode == EX_STALE
        assert time.monotonic() - waited >= 1.0
        proc.send_signal(signal.SIGCONT)
        assert maestro(layout, "status", "--wait-healthy", "15", env=env).returncode == EX_HEALTHY
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert maestro(layout, "status", env=env).returncode == EX_NOT_RUNNING


def test_health_in_words() -> None:
    limit = stale_after(1000)
    assert limit == 33
    assert health({"alive": False, "pid": None, "heartbeat_age_s": None, "lock_pid": None}, limit) == \
        (EX_NOT_RUNNING, "not running")
    code, words = health({"alive": True, "pid": 7, "heartbeat_age_s": 4000.0, "lock_pid": 7}, limit)
    assert code == EX_STALE and "heartbeat is 67 min old (limit 33.0 s)" in words
    assert health({"alive": True, "pid": 7, "heartbeat_age_s": 1.5, "lock_pid": 7}, limit)[0] == EX_HEALTHY


def test_a_bad_wait_is_a_usage_error(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent")
    result = maestro(layout, "status", "--wait-healthy", "-1", env=daemon_env(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("maestro: ")
