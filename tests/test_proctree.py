"""Process-tree operations against real processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from maestro_py.bus.owner import Owner
from maestro_py.session import proctree
from tests.fakes import gone, wait_for

FAKE = Path(__file__).with_name("fake_claude.py")
REPO = Path(__file__).resolve().parent.parent

# Ignores SIGTERM, says so on stdout once the handler is in place, then sleeps.
STUBBORN = "import signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def test_an_owner_is_this_process_and_not_a_reused_pid() -> None:
    me = Owner.current()
    assert me.pid == os.getpid() and me.is_alive()
    assert not Owner(me.pid, me.started_cs - 500).is_alive()  # same pid, different start: a reused pid


def test_an_owner_that_exited_or_is_a_zombie_is_gone() -> None:
    child = subprocess.Popen(["true"])
    owner = Owner.of(child.pid)
    wait_for(lambda: gone(child.pid), timeout=3, what="the child gone")
    assert not owner.is_alive()  # a zombie is not an owner
    child.wait()
    assert not owner.is_alive()
    assert not Owner(2**22 + 12345, 0).is_alive()


def test_snapshot_lists_root_then_descendants() -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        wait_for(lambda: len(proctree.snapshot(child.pid)) == 3, timeout=3, what="three processes in the tree")
        procs = proctree.snapshot(child.pid)
        assert procs[0].pid == child.pid
        assert {p.name() for p in procs[1:]} == {"sleep"}
    finally:
        proctree.end_tree(proctree.snapshot(child.pid), 0.5)
        child.wait()
    assert proctree.snapshot(child.pid) == []


def test_end_tree_keeps_the_exit_status_for_popen() -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    wait_for(lambda: len(proctree.snapshot(child.pid)) == 3, timeout=3, what="three processes in the tree")
    procs = proctree.snapshot(child.pid)
    phases: list[tuple[str, list[int]]] = []
    assert proctree.end_tree(procs, 1.0, on_phase=lambda ph, pids: phases.append((ph, pids))) == []
    assert all(gone(p.pid) for p in procs)
    # end_tree must not reap: Popen still sees the real cause of death.
    assert child.wait(timeout=2) == -signal.SIGTERM
    assert [ph for ph, _ in phases] == ["term"]
    assert sorted(phases[0][1]) == sorted(p.pid for p in procs)


def test_end_tree_kills_what_ignores_sigterm() -> None:
    child = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    phases: list[str] = []
    started = time.monotonic()
    killed = proctree.end_tree(proctree.snapshot(child.pid), 0.3, on_phase=lambda ph, _pids: phases.append(ph))
    assert time.monotonic() - started >= 0.3
    assert killed == [child.pid]
    assert phases == ["term", "kill"]
    assert child.wait(timeout=2) == -signal.SIGKILL
    child.stdout.close()


def test_end_tree_tolerates_already_dead_processes() -> None:
    child = subprocess.Popen(["true"])
    procs = proctree.snapshot(child.pid)
    child.wait()
    assert proctree.end_tree(procs, 0.1) == []
    assert proctree.end_tree([], 0.1) == []


def test_kill_now_and_wait_gone() -> None:
    child = subprocess.Popen(["sleep", "30"])
    procs = proctree.snapshot(child.pid)
    assert proctree.kill_now(procs) == [child.pid]
    assert proctree.wait_gone(procs, 2.0) == []
    assert child.wait(timeout=2) == -signal.SIGKILL
    assert proctree.kill_now(procs) == []  # reaped: nothing left to signal


# Runs in its own interpreter: becoming a subreaper and reaping children must never touch pytest itself.
SUBREAPER_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    import psutil
    from maestro_py.session import proctree

    def is_subreaper():
        import ctypes
        flag = ctypes.c_int(0)
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(37, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0  # PR_GET_CHILD_SUBREAPER

    fake, pidfile = sys.argv[1], sys.argv[2]
    out = {"before": is_subreaper(), "became": proctree.become_subreaper(), "after": is_subreaper()}
    # A child the daemon tracks (a live sub-session): must be spared.
    tracked = subprocess.Popen(["sleep", "30"])
    env = dict(os.environ, CLAUDE_CODE_FAKE_MODE="orphan", CLAUDE_CODE_FAKE_PIDFILE=pidfile, CLAUDE_CODE_FAKE_SLEEP="0",
               MAESTRO_TICK="20261207T000000000000Z-0000001-0000abcd memo")
    cli = subprocess.run([fake], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=10)
    orphan = int(open(pidfile).read())
    out["cli_rc"] = cli.returncode
    out["orphan_ppid"] = psutil.Process(orphan).ppid()
    out["me"] = os.getpid()
    # Also an untracked child that already exited: its zombie must be reaped.
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 3
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    zpid = zombie.pid
    zombie.returncode = 0  # stop Popen's finaliser from waiting on it: reap_adopted owns it now
    out["reaped"] = proctree.reap_adopted({tracked.pid})
    out["orphan"] = orphan
    out["zombie"] = zpid
    out["orphan_exists"] = psutil.pid_exists(orphan)
    out["zombie_exists"] = psutil.pid_exists(zpid)
    out["tracked_alive"] = tracked.poll() is None
    tracked.kill()
    tracked.wait()
    out["children_left"] = [c.pid for c in psutil.Process().children()]
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux-only")
def test_subreaper_adopts_and_reap_adopted_kills_orphans(tmp_path: Path) -> None:
    pidfile = tmp_path / "orphan.pid"
    proc = subprocess.run(
        [sys.executable, "-c", SUBREAPER_SCRIPT, str(FAKE), str(pidfile)],
        cwd=REPO, capture_output=True, timeout=20, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["became"] is True and out["after"] is True
    assert out["cli_rc"] == 0
    # The detached tool outlived the CLI and was reparented to the subreaper, not to init.
    assert out["orphan_ppid"] == out["me"]
    assert [r[0] for r in out["reaped"]] == [out["orphan"]]  # the zombie is reaped, not reported as killed
    assert out["reaped"][0][1] and out["reaped"][0][2] == "20261207T000000000000Z-0000001-0000abcd memo"  # its run
    assert not out["orphan_exists"] and not out["zombie_exists"]
    assert out["tracked_alive"] is True
    assert out["children_left"] == []


def test_become_subreaper_in_a_child_only() -> None:
    # Never in the pytest process: it would change where every other test's orphans go.
    code = ("import ctypes; from maestro_py.session import proctree; flag = ctypes.c_int(0); "
            "became = proctree.become_subreaper(); "
            "ok = ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0) == 0; "  # PR_GET_CHILD_SUBREAPER
            "print(became, ok and flag.value != 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=10)
    expected = "True True" if sys.platform.startswith("linux") else "False False"
    assert proc.stdout.strip() == expected, proc.stderr
