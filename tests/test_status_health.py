"""`maestro status` tells scripts the truth: exit 0 only for a live daemon with a fresh heartbeat, 3 when none
runs, 4 when one holds the root but has gone quiet (SIGSTOP past the stale limit), 78 when the root's settings are
invalid; `--wait-healthy` waits. `GET /healthz` of `maestro serve` answers with the same judgment (`state.judge`)."""

from __future__ import annotations

import html
import json
import re
import signal
import time
from pathlib import Path

from maestro_py.bus.owner import Owner
from maestro_py.cli.common import EX_CONFIG as COMMON_EX_CONFIG
from maestro_py.clock import SystemClock, iso
from maestro_py.daemon.lock import DaemonLock
from maestro_py.paths import Layout
from maestro_py.state import (CODES, EX_CONFIG, EX_HEALTHY, EX_NOT_RUNNING, EX_STALE, Condition, health,
                              stale_after)
from tests.fakes import daemon_env, maestro, start_daemon, write_agent
from tests.serve_support import Served


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


# -- `maestro status` and `GET /healthz` give one judgment (`state.judge`) ------------------------------------------

AGE = re.compile(r"\d+(\.\d+)? (s|min|h)\b")  # the heartbeat's age moves on between two reads


def status_and_healthz(layout: Layout, served: Served) -> tuple[tuple[int, str], tuple[int, str, int]]:
    """(exit code, reason) of `maestro status`, and (exit_code, health, HTTP status) of GET /healthz, read together."""
    result = maestro(layout, "status", "--json", env=served.env)
    if result.returncode == EX_CONFIG:
        assert result.stdout == "" and result.stderr.startswith("maestro: "), result.stderr
        status = (result.returncode, result.stderr.removeprefix("maestro: ").strip())
    else:
        daemon = json.loads(result.stdout)["daemon"]
        assert daemon["exit_code"] == result.returncode
        status = (result.returncode, daemon["health"])
    answer = served.request("GET", "/healthz")
    doc = answer.json()
    assert doc["healthy"] is (doc["exit_code"] == EX_HEALTHY)
    return (status[0], AGE.sub("AGE", status[1])), (doc["exit_code"], AGE.sub("AGE", doc["health"]), answer.status)


def test_a_configuration_error_is_one_verdict_for_status_and_healthz(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", prompts={"hello": "hi"})
    served = Served(layout, tmp_path)
    try:
        (code, words), (http_code, http_words, http) = status_and_healthz(layout, served)
        assert (code, words) == (http_code, http_words) == (EX_NOT_RUNNING, "not running") and http == 503
        # A broken cadences.toml is no configuration error for either: a running daemon keeps its previous registry.
        layout.registry_file.write_text("[hello\n")
        assert status_and_healthz(layout, served) == ((EX_NOT_RUNNING, "not running"),
                                                      (EX_NOT_RUNNING, "not running", 503))
        # An invalid setting in .env, written after the server started: both say 78, in the same words.
        layout.env_file.write_text("MAESTRO_POLL_MS=often\n")
        (code, words), (http_code, http_words, http) = status_and_healthz(layout, served)
        assert code == http_code == EX_CONFIG and http == 503
        assert words == http_words == "MAESTRO_POLL_MS='often': not a valid value"
        assert f'class="bad">daemon: {html.escape(words)}</p>' in served.request("GET", "/").text  # the page too
        layout.env_file.write_bytes(b"MAESTRO_POLL_MS=\xff\n")  # not UTF-8: `maestro status` fails before it judges
        (code, words), (http_code, http_words, http) = status_and_healthz(layout, served)
        assert code == http_code == EX_CONFIG and words == http_words and "not UTF-8" in words
        layout.env_file.write_text("MAESTRO_POLL_MS=1000\n")  # repaired: judged as before, without a restart
        assert status_and_healthz(layout, served)[1] == (EX_NOT_RUNNING, "not running", 503)
    finally:
        served.stop()


def test_status_and_healthz_agree_on_a_live_a_stale_and_a_gone_daemon(tmp_path: Path) -> None:
    """A status file written as a live daemon writes it, by a process holding the root's lock (this one)."""
    layout = write_agent(tmp_path / "agent", prompts={"hello": "hi"})
    served = Served(layout, tmp_path)
    me = Owner.current()

    def beat(heartbeat: str, owner: Owner = me) -> None:
        layout.consumer_file.write_text(json.dumps({"pid": owner.pid, "owner": owner.token, "heartbeat": heartbeat,
                                                    "state": "running", "live_subsessions": []}))

    def agree() -> tuple[int, str]:
        (code, words), (http_code, http_words, http) = status_and_healthz(layout, served)
        assert (code, words) == (http_code, http_words) and http == (200 if code == EX_HEALTHY else 503)
        return code, words

    try:
        with DaemonLock(layout.lock_file, layout.root):
            assert agree() == (EX_STALE, f"pid {me.pid} holds the lock but has written no status yet")
            beat(iso(SystemClock().now()))
            assert agree() == (EX_HEALTHY, f"alive (pid {me.pid}, heartbeat AGE ago)")
            beat("2020-01-01T00:00:00.000Z")
            code, words = agree()
            assert code == EX_STALE and words.startswith(f"STALE: pid {me.pid} holds the lock but its heartbeat is")
        assert agree() == (EX_NOT_RUNNING, "not running")  # the lock released: nobody runs, whatever the file says
    finally:
        served.stop()


def test_the_verdict_in_process() -> None:
    assert [c for c in Condition if CODES[c] == EX_STALE] == [Condition.NO_STATUS, Condition.STALE,
                                                              Condition.OTHER_PID]
    assert EX_CONFIG == COMMON_EX_CONFIG == 78  # the CLI's configuration-error code, the same number
