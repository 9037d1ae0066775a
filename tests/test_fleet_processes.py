"""The fleet governor with real daemons: many `maestro run` processes (one per agent root) sharing a store,
real `claude` stand-ins, kill -9, and a real PostgreSQL server stopped and started under them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest

from maestro_py.bus.store import Bus
from maestro_py.fleet import open_store
from maestro_py.fleet.model import Lease
from maestro_py.paths import Folder, Layout
from tests.fakes import (REPO, daemon_env, events, maestro, read_json, spawns, start_daemon, tick_ids, wait_for,
                         write_agent)

RUN_TOKENS = 1290  # what one fake_claude run spends: a reservation of exactly one run


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/governor.db"
    return str(request.getfixturevalue("pg_url"))


def root(tmp_path: Path, name: str, prompt: str = "[[fake_claude:ok]]", extra: str = "") -> Layout:
    registry = f'[memo]\nmode = "escalate"\nreserve_tokens = {RUN_TOKENS}\nreserve_usd = 0.01\n{extra}'
    return write_agent(tmp_path / name, registry, {"memo": prompt})


def enqueue_cli(layout: Layout, env: dict[str, str], cadence: str, n: int) -> None:
    """n ticks with distinct payloads, as `maestro enqueue` writes them (through the same `Bus.enqueue`)."""
    bus = Bus(layout, max_inbox=10_000)
    for i in range(n):
        bus.enqueue(cadence, payload={"n": i})


def test_twenty_roots_started_at_once_spend_exactly_a_five_run_fleet_budget(tmp_path: Path, url: str) -> None:
    open_store(url).set_limit("fleet", "daily", tokens=5 * RUN_TOKENS)
    roots = [root(tmp_path, f"agent{i:02d}") for i in range(20)]
    envs = []
    for i, lay in enumerate(roots):
        # With PostgreSQL the roots split into two groups playing two machines (their own connection settings).
        machine_url = url if i % 2 == 0 or url.startswith("sqlite") else url + "?application_name=machine-b"
        env = daemon_env(tmp_path, MAESTRO_GOVERNOR_URL=machine_url)
        envs.append(env)
        enqueue_cli(lay, env, "memo", 2)
    def wave() -> None:  # every root's `maestro run --once`, all started at once
        procs = [subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(lay.root), "run", "--once"],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for lay, env in zip(roots, envs)]
        for proc in procs:
            _, err = proc.communicate(timeout=150)
            assert proc.returncode == 0, err[-2000:]

    wave()
    assert len(spawns(tmp_path)) <= 5
    # On a loaded machine a reserve can time out waiting for the store (fail closed: that `--once` daemon exits
    # with its ticks waiting). A second wave lets them try again: still exactly five runs, never a sixth.
    wave()
    assert len(spawns(tmp_path)) == 5
    store = open_store(url)
    charges = store.charges()
    assert len(charges) == 5 and sum(c["tokens"] for c in charges) <= 5 * RUN_TOKENS
    assert store.live(store_now()) == []
    waiting = [(lay, t) for lay in roots for t in tick_ids(lay, Folder.INBOX)]
    assert len(waiting) == 35
    assert all(read_json(lay.folder(Folder.INBOX) / f"{t}.json")["attempts"] == 0 for lay, t in waiting)


def store_now() -> datetime:
    return datetime.now(timezone.utc)


def claude_processes(tmp_path: Path) -> int:
    """Live fake `claude` processes started from this test's folder."""
    marker = str(tmp_path / "claude")
    count = 0
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return count


def test_a_fleet_live_cap_of_two_holds_across_five_roots(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/governor.db"
    roots = [root(tmp_path, f"agent{i}", "[[fake_claude:sleep:1.2]]") for i in range(5)]
    env = daemon_env(tmp_path, MAESTRO_GOVERNOR_URL=url, MAESTRO_FLEET_MAX_LIVE=2, MAESTRO_POLL_MS=100)
    for lay in roots:
        enqueue_cli(lay, env, "memo", 2)
    store = open_store(url)
    peak = {"processes": 0, "reservations": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["processes"] = max(peak["processes"], claude_processes(tmp_path))
            peak["reservations"] = max(peak["reservations"], len(store.live(store_now())))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    procs = [start_daemon(lay, env) for lay in roots]
    try:
        wait_for(lambda: sum(len(tick_ids(lay, Folder.DONE)) for lay in roots) == 10, timeout=90,
                 what="all ten runs done")
    finally:
        done.set()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=30)
    assert len(spawns(tmp_path)) == 10
    assert peak["processes"] == 2 and peak["reservations"] <= 2
    refused = sum(read_json(lay.consumer_file)["counters"].get("skipped_fleet_live_cap", 0) for lay in roots)
    assert refused > 0
    assert len(store.charges()) == 10 and store.live(store_now()) == []


def test_a_daemon_killed_mid_run_is_charged_its_reservation_once(tmp_path: Path, url: str) -> None:
    lay = root(tmp_path, "agent", "[[fake_claude:sleep:60]]")
    env = daemon_env(tmp_path, MAESTRO_GOVERNOR_URL=url, MAESTRO_FLEET_LEASE_SECONDS=5)
    enqueue_cli(lay, env, "memo", 1)
    proc = start_daemon(lay, env)
    store = open_store(url)
    wait_for(lambda: len(store.live(store_now())) == 1, what="the run's reservation")
    (held,) = store.live(store_now())
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    wait_for(lambda: claude_processes(tmp_path) == 0, what="the orphaned run to die with its daemon")
    # Nobody renews the lease: the next write anywhere in the fleet charges it at its reserved amount.
    time.sleep(5.2)
    other = open_store(url)
    assert other.reserve(Lease("probe", "other", "x", "elsewhere", 1, "t", 1, 0), store_now(), lease_seconds=60,
                         max_live=None).admitted
    other.release("probe")
    expired = [c for c in store.charges() if c["run_id"] == held["run_id"]]
    assert [(c["tokens"], c["usd"], c["measured"], c["source"]) for c in expired] == \
        [(RUN_TOKENS, 0.01, 0, "lease_expired")]

    lay.prompt_file("memo").write_text("[[fake_claude:ok]]")  # the restarted daemon runs the tick again
    result = subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(lay.root), "run", "--once"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    charges = store.charges()
    assert len(charges) == 2 and len({c["run_id"] for c in charges}) == 2
    assert sorted(c["source"] for c in charges) == ["lease_expired", "settled"]
    assert sum(c["tokens"] for c in charges) == 2 * RUN_TOKENS  # the lost run and the rerun, each once
    assert len(tick_ids(lay, Folder.DONE)) == 1


def test_the_store_going_down_mid_run_holds_spawns_keeps_attempts_and_resumes_by_itself(
        tmp_path: Path, pg_server, pg_url: str) -> None:
    lay = root(tmp_path, "agent", "[[fake_claude:sleep:3]]", extra='[ping]\nmode = "inline"\nhandler = "noop"\n')
    env = daemon_env(tmp_path, MAESTRO_GOVERNOR_URL=pg_url, MAESTRO_POLL_MS=100)
    enqueue_cli(lay, env, "memo", 2)
    proc = start_daemon(lay, env)
    try:
        wait_for(lambda: len(spawns(tmp_path)) == 1, what="the first run")
        pg_server.stop()
        try:
            enqueue_cli(lay, env, "ping", 1)
            wait_for(lambda: any("ping" in (read_json(p).get("cadence") or "") for p in
                                 lay.folder(Folder.DONE).glob("*.json")), what="the inline tick to run")
            wait_for(lambda: lay.fleet_outbox_file.exists(), timeout=30, what="the first run's settle in the outbox")
            time.sleep(1.0)
            assert len(spawns(tmp_path)) == 1  # the second memo tick waits
            (waiting,) = tick_ids(lay, Folder.INBOX)
            assert read_json(lay.folder(Folder.INBOX) / f"{waiting}.json")["attempts"] == 0
            status = maestro(lay, "status", env=env)
            assert "GOVERNOR UNAVAILABLE" in status.stdout, status.stdout
            doctor = maestro(lay, "doctor", "--offline", env=env)
            assert "governor" in doctor.stdout and doctor.returncode == 1
            assert [e["stage"] for e in events(lay)].count("governor_unavailable") == 1
        finally:
            pg_server.start()
        wait_for(lambda: len(spawns(tmp_path)) == 2, timeout=30, what="spawning to resume without a restart")
        wait_for(lambda: not lay.fleet_outbox_file.exists(), timeout=30, what="the outbox to be pushed")
        wait_for(lambda: len(tick_ids(lay, Folder.DONE)) == 3, timeout=30, what="both runs done")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    charges = open_store(pg_url).charges()
    assert len(charges) == 2 and {c["source"] for c in charges} == {"settled"}
    assert "governor_available" in [e["stage"] for e in events(lay)]
