"""Events on stderr: `maestro run --log-stderr`, under journald (with `<N>` levels), and nothing extra otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from maestro_py.bus.logview import Event, format_event
from maestro_py.daemon.console import Console, journal_stream, under_launchd
from maestro_py.paths import Folder, Layout
from tests.fakes import (
    REPO, SECRET, daemon_env, events, maestro, read_json, start_daemon, tick_ids, wait_for, write_agent,
)

REGISTRY = """
[beat]
mode = "inline"
handler = "noop"

[broken]
mode = "inline"
handler = "false"
max_attempts = 2
"""
LEVELS = {"error": "<3>", "warn": "<4>", "info": "<6>", "debug": "<7>"}


def quiet_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """daemon_env without whatever journal or launchd job the test run itself is in."""
    env = daemon_env(tmp_path, MAESTRO_DAILY_USD_BUDGET="5", **extra)
    for name in ("JOURNAL_STREAM", "XPC_SERVICE_NAME"):
        if name not in extra:
            env.pop(name, None)
    return env


def run_a_little(layout: Layout, env: dict[str, str]) -> None:
    """An inline tick that succeeds, one that retries then is dead-lettered, and a sub-session."""
    for cadence in ("beat", "broken", "memo"):
        assert maestro(layout, "enqueue", cadence, env=env).returncode == 0
    wait_for(lambda: len(tick_ids(layout, Folder.DONE)) == 2 and len(tick_ids(layout, Folder.DLQ)) == 1,
             what="the ticks to settle")


def daemon_lines(layout: Layout) -> list[str]:
    """The daemon's events as `maestro logs` shows them (`enqueued` is written by `maestro enqueue`)."""
    return [format_event(Event("", e)) for e in events(layout) if e["stage"] != "enqueued"]


def check_lines(layout: Layout, lines: list[str], *, journal: bool) -> None:
    """One line per event, in order, the banner after `daemon_started`, the stop line last; levels if journal."""
    expected = daemon_lines(layout)
    stages = [e for e in events(layout) if e["stage"] != "enqueued"]
    shown = []
    for line in lines:
        if journal:
            level = line[:3]
            assert level in LEVELS.values(), line
            line = line[3:]
        shown.append(line)
    banner = next(i for i, line in enumerate(shown) if line.startswith("maestro 0.1.0 running on"))
    stop = next(i for i, line in enumerate(shown) if line.startswith("maestro stopped"))
    assert stop == len(shown) - 1 and " daemon_started " in shown[banner - 1]
    assert shown[:banner] + shown[banner + 1:stop] == expected
    if journal:
        assert [line[:3] for line in lines[:banner] + lines[banner + 1:stop]] == [LEVELS[e["level"]] for e in stages]
        assert lines[banner].startswith("<6>") and lines[stop].startswith("<6>")
        assert {"<3>", "<4>", "<6>"} <= {line[:3] for line in lines}  # dlq, retry, done
    text = shown[banner]
    root = str(layout.root)
    for words in (root, "wake-up inotify", "max live 1", "budgets: daily $5.00", "timeouts: spawn 1800 s",
                  "inline 60 s", "stop grace 1 s"):
        assert words in text, (words, text)
    assert "claimed=4" in shown[stop] and "dlq=1" in shown[stop] and "0 stderr line(s) dropped" in shown[stop]


def test_log_stderr_prints_the_banner_each_event_and_a_stop_line(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, REGISTRY, {"memo": "Write it."})
    env = quiet_env(tmp_path)
    proc = start_daemon(layout, env, "--log-stderr")
    run_a_little(layout, env)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert SECRET not in err and SECRET not in out
    check_lines(layout, err.splitlines(), journal=False)
    assert read_json(layout.consumer_file)["state"] == "stopped"


def test_under_journald_each_line_carries_its_syslog_level(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, REGISTRY, {"memo": "Write it."})
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = quiet_env(tmp_path, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")  # as systemd names the journal socket
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=write_end, cwd=REPO)
    finally:
        os.close(write_end)
    try:
        wait_for(lambda: layout.consumer_file.exists(), what="daemon status file")
        run_a_little(layout, env)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=30)
        os.close(read_end)
    err = b"".join(chunks).decode()
    assert SECRET not in err
    check_lines(layout, err.splitlines(), journal=True)


def test_without_the_flag_a_journal_or_launchd_nothing_extra_reaches_stderr(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, REGISTRY, {"memo": "Write it."})
    # An inherited JOURNAL_STREAM that names another file (a shell started from a service) does not count.
    env = quiet_env(tmp_path, JOURNAL_STREAM="1:2", XPC_SERVICE_NAME="0")
    proc = start_daemon(layout, env)
    run_a_little(layout, env)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == "" and out == ""


def test_a_full_stderr_drops_lines_instead_of_blocking() -> None:
    read_end, write_end = os.pipe()  # nobody reads it
    try:
        console = Console(fd=write_end)
        event = {"ts": "2026-12-01T10:00:00Z", "level": "info", "stage": "done", "id": "t1", "cadence": "beat",
                 "outcome": "ok", "detail": "x" * 200}
        started = time.monotonic()
        for _ in range(5000):  # ~1.3 MB, far past a pipe's 64 KiB
            console(event)
        assert time.monotonic() - started < 5
        assert console.written > 0 and console.dropped > 0 and console.written + console.dropped == 5000
        assert console.write("error", "y" * 100_000) is False  # still full: dropped, not half-written
        os.read(read_end, 1 << 20)
        assert console.write("error", "y" * 100_000) is True  # cut to one line a pipe takes whole
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_stderr_whose_reader_is_gone_is_dropped_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    console = Console(fd=write_end)
    try:
        assert console.write("info", "hello") is False and console.dropped == 1
    finally:
        os.close(write_end)


def test_journal_and_launchd_detection(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as fh:
        st = os.fstat(fh.fileno())
        assert journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fh.fileno())
        assert not journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fh.fileno())
        assert not journal_stream({}, fh.fileno())
    assert under_launchd({"XPC_SERVICE_NAME": "com.maestro.agent.daemon"})
    assert not under_launchd({"XPC_SERVICE_NAME": "0"})  # a Terminal
    assert not under_launchd({"XPC_SERVICE_NAME": "application.com.microsoft.VSCode.123.456"})
    assert not under_launchd({})
