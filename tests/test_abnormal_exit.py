"""A daemon that dies abnormally (SIGKILL, OOM, a crash) leaves no run going on unsupervised, and its successor
never runs a tick again beside what is left of its last run (hardening item 1; SIGHUP: tests/test_daemon.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil

from maestro_py.paths import Layout
from tests.fakes import daemon_env, events, gone, ledger_rows, maestro, spawns, start_daemon, wait_for, write_agent


def test_a_sigkilled_daemon_takes_its_sub_session_with_it(layout: Layout, tmp_path: Path) -> None:
    """The CLI used to run on under PID 1, with no timeout, after its daemon was SIGKILLed or OOM-killed."""
    write_agent(layout, "", {"slow": "[[fake_claude:sleep:300]]"})
    env = daemon_env(tmp_path)
    maestro(layout, "enqueue", "slow", env=env)
    proc = start_daemon(layout, env)
    wait_for(lambda: len(spawns(tmp_path)) == 1, what="spawn")
    child = psutil.Process(int(spawns(tmp_path)[0].split()[0]))
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: gone(child.pid), timeout=5, what="the CLI gone with its daemon")


def test_a_restarted_daemon_ends_what_a_dead_one_left_before_running_the_tick_again(layout: Layout,
                                                                                   tmp_path: Path) -> None:
    """A tool in a session of its own survives its CLI; the next daemon used to reap the claim and run the tick
    again beside it (two live runs under a cap of 1, the orphan outliving even the second daemon)."""
    write_agent(layout, "[leak]\nmax_attempts = 3\n", {"leak": "[[fake_claude:orphan]]"})
    pidfile = tmp_path / "tool.pid"
    env = daemon_env(tmp_path, CLAUDE_CODE_FAKE_PIDFILE=str(pidfile), MAESTRO_REAP_SECONDS="3600")
    tick = maestro(layout, "enqueue", "leak", env=env).stdout.strip()
    first = start_daemon(layout, env)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the tool started")
    tool = psutil.Process(int(pidfile.read_text()))
    first.kill()
    first.wait(timeout=10)
    assert tool.is_running() and tool.status() != psutil.STATUS_ZOMBIE  # its own session: not taken along
    pidfile.unlink()
    second = start_daemon(layout, env)
    try:
        ended = wait_for(lambda: [e for e in events(layout, lenient=True) if e["stage"] == "leftovers_ended"],
                         what="the leftovers ended")
        assert tool.pid in ended[0]["pids"]
        wait_for(lambda: not tool.is_running() or tool.status() == psutil.STATUS_ZOMBIE, timeout=5,
                 what="the old tool gone")
        # Only then does the tick run again (its claim was the dead daemon's).
        wait_for(lambda: len(spawns(tmp_path)) == 2, what="the tick running again")
        started = [e for e in events(layout, lenient=True) if e["stage"] in ("leftovers_ended", "spawned")]
        assert [e["stage"] for e in started] == ["spawned", "leftovers_ended", "spawned"]
        assert started[-1]["id"] == tick
    finally:
        second.send_signal(signal.SIGTERM)
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=15)


def test_a_run_killed_with_its_daemon_is_booked_before_the_tick_runs_again(layout: Layout, tmp_path: Path) -> None:
    """SIGKILL of the daemon while its sub-session runs (the API has billed its input): the restarted daemon books
    the lost run (usage unknown, charged its reservation) before it runs the tick again, so the budget sees both."""
    write_agent(layout, "[memo]\nreserve_usd = 0.25\nreserve_tokens = 20000\n", {"memo": "Write the memo."})
    env = daemon_env(tmp_path, CLAUDE_CODE_FAKE_MODE="sleep", CLAUDE_CODE_FAKE_SLEEP="60")
    tick = maestro(layout, "enqueue", "memo", env=env).stdout.strip()
    first = start_daemon(layout, env)
    try:
        wait_for(lambda: any(e["stage"] == "spawned" for e in events(layout, lenient=True)), what="the run started")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    for proc in psutil.process_iter(["cmdline"]):  # its sub-session dies with it, as under systemd's KillMode
        if str(tmp_path / "claude") in " ".join(proc.info["cmdline"] or []):
            proc.kill()
    again = maestro(layout, "run", "--once", env={**env, "CLAUDE_CODE_FAKE_MODE": "ok"}, timeout=60)
    assert again.returncode == 0, again.stderr
    rows = [r for r in ledger_rows(layout) if r["tick"] == tick]
    assert [r["attempt"] for r in rows] == [1, 2] or [r["attempt"] for r in rows] == [1, 1], rows
    lost, rerun = rows
    assert lost["metered"] is False and lost["total_tokens"] is None and lost.get("lost") is True
    assert lost["charged_usd"] == 0.25 and lost["charged_tokens"] == 20000  # its reservation, never a silent zero
    assert rerun["ok"] is True and rerun["metered"] is True
    assert [e for e in events(layout, lenient=True) if e["stage"] == "lost_run_booked"]
    again = maestro(layout, "run", "--once", env=env, timeout=60)  # nothing more is booked on a later start
    assert len([r for r in ledger_rows(layout) if r["tick"] == tick]) == 2
