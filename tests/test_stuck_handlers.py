"""A stuck inline handler: bounded by its own short timeout, cut short by SIGTERM, and unable to pile up
threads (hardening item 4)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from maestro_py import inline
from maestro_py.paths import Folder, Layout
from tests.fakes import (
    REPO, FakeSpawner, daemon_env, enqueue, events, make_daemon, maestro, read_json, run_steps, tick_ids, wait_for,
    write_agent,
)

HANG = "import time\n\ndef hang(tick):\n    time.sleep(30)\n"
REGISTRY = "[stuck]\nmode = 'inline'\nhandler = 'helpers:hang'\nmax_attempts = 5\n"


def test_sigterm_is_honoured_while_a_handler_is_stuck(layout: Layout, tmp_path: Path) -> None:
    """The daemon used to stay blocked in the handler for its whole timeout (1800 s by default), SIGTERM or not."""
    write_agent(layout, REGISTRY, files={"helpers.py": HANG})
    env = daemon_env(tmp_path, MAESTRO_STOP_GRACE_SECONDS="1")
    tick = maestro(layout, "enqueue", "stuck", env=env).stdout.strip()
    proc = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    wait_for(lambda: any(e["stage"] == "claimed" for e in events(layout, lenient=True)), what="the handler running")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - sent < 5
    assert tick_ids(layout, Folder.INBOX) == [tick]  # cut short by the stop: not the tick's fault
    data = read_json(layout.folder(Folder.INBOX) / f"{tick}.json")
    assert data["attempts"] == 0 and "daemon is stopping" in data["history"][-1]["reason"]


def test_inline_work_has_its_own_short_default_timeout(layout: Layout, clock: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(inline, "_ABANDONED", [])
    monkeypatch.setattr(inline, "_WORKER", None)
    write_agent(layout, REGISTRY, files={"helpers.py": HANG})
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_INLINE_TIMEOUT_SECONDS="0.2")
    assert daemon.settings.spawn_timeout == 1800  # sub-sessions keep theirs
    (tick,) = enqueue(layout, clock, "stuck")
    started = time.monotonic()
    run_steps(daemon, 1)  # retried at once within the step until its 5 attempts are spent
    assert time.monotonic() - started < 10
    dead = read_json(layout.folder(Folder.DLQ) / f"{tick}.json")
    assert [h["reason"] for h in dead["history"][1:]] == ["timed out after 0.2s (left running in a background thread)"] * 4 + [
        f"{inline.MAX_ABANDONED} earlier module:function calls are still stuck in background threads; not starting "
        "another (fix the helper, then restart the daemon)"]


def test_timed_out_function_handlers_cannot_pile_up_threads(tmp_path: Path, monkeypatch: Any) -> None:
    """40 timed-out ticks used to leave 41 threads behind."""
    monkeypatch.setattr(inline, "_ABANDONED", [])  # what earlier tests left stuck does not count here
    monkeypatch.setattr(inline, "_WORKER", None)
    root = tmp_path / "agent"
    write_agent(root, files={"helpers.py": HANG})
    before = threading.active_count()
    results = [inline.call("helpers:hang", {"n": n}, root=root, env={}, timeout=0.05) for n in range(40)]
    assert threading.active_count() - before <= inline.MAX_ABANDONED + 1
    assert all(not r.ok for r in results)
    assert "still stuck in background threads" in results[-1].error
    assert sum("timed out" in (r.error or "") for r in results) == inline.MAX_ABANDONED


def test_a_stuck_command_is_cut_short_by_a_stop(tmp_path: Path) -> None:
    root = tmp_path / "agent"
    write_agent(root)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    result = inline.call("sleep 30", {}, root=root, env={"PATH": "/usr/bin:/bin"}, timeout=60, cancelled=stop.is_set)
    assert result.interrupted and time.monotonic() - started < 5
