"""Alerts for broken configuration (issue 26, item 4a and 4c), each from a real daemon process to the loopback
receiver: an edit of `.env` or `cadences.toml` the daemon refused (the file, the line, the reason; once per edit,
and again when fixed), and a service sync that failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from maestro_py.daemon.incidents import RULES
from maestro_py.paths import Layout
from tests.fakes import FakeReceiver, daemon_env, events, maestro, start_daemon, wait_for, write_agent
from tests.service_support import drop_schedule, example_agent, fake_tool

NOOP = '[memo]\nmode = "inline"\nhandler = "noop"\n'


def edit(path: Path, text: str) -> None:
    """Write `text` as an editor would, and move the file's time on, so the daemon's next look sees a change."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def stages(layout: Layout, stage: str) -> int:
    return sum(1 for e in events(layout, lenient=True) if e["stage"] == stage)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_a_refused_env_edit_alerts_once_with_file_line_and_reason_and_again_when_fixed(
        tmp_path: Path, receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent", NOOP)
    proc = start_daemon(layout, daemon_env(tmp_path, MAESTRO_NOTIFY_URLS=receiver.url()))
    try:
        edit(layout.env_file, "MAESTRO_POLL_MS=200\n# today's limit\nMAESTRO_DAILY_USD_BUDGET=5$\n")
        (refused,) = receiver.wait(1)
        assert refused["title"] == "maestro agent: .env edit refused (line 3)" and refused["type"] == "failure"
        assert refused["message"].splitlines()[0] == (
            f"{layout.env_file}, line 3: MAESTRO_DAILY_USD_BUDGET='5$': not a valid value; the daemon keeps its "
            "previous settings until it is fixed")
        assert f"file: {layout.env_file}" in refused["message"] and "line: 3" in refused["message"]
        edit(layout.env_file, "MAESTRO_POLL_MS=200\n# today's limit\nMAESTRO_DAILY_USD_BUDGET=5$\n")  # saved again
        wait_for(lambda: stages(layout, "env_invalid") == 2, what="the second refusal")
        edit(layout.env_file, "MAESTRO_POLL_MS=200\nMAESTRO_DAILY_USD_BUDGET=5\n")
        fixed = receiver.wait(2)[1]
        assert fixed["title"] == "maestro agent: .env fixed" and fixed["type"] == "success"
        # The same mistake once more, after the fix, is news again; a secret in a refused edit is never quoted.
        edit(layout.env_file, "MAESTRO_DAILY_USD_BUDGET=5$\n")
        assert receiver.wait(3)[2]["title"] == "maestro agent: .env edit refused (line 1)"
        edit(layout.env_file, "MAESTRO_DAILY_USD_BUDGET=5\nMAESTRO_NOTIFY_COMMAND=page-me --token hunter2-x 'oops\n")
        assert receiver.wait(4)[3]["title"] == "maestro agent: .env edit refused (line 2)"
    finally:
        stop(proc)
    titles = [a["title"].removeprefix("maestro agent: ") for a in receiver.alerts]
    assert titles == [".env edit refused (line 3)", ".env fixed", ".env edit refused (line 1)",
                      ".env edit refused (line 2)"]  # the second save of the first mistake: no alert
    assert "MAESTRO_NOTIFY_COMMAND='\u2026': cannot split the command" in receiver.alerts[3]["message"]
    assert b"hunter2" not in receiver.raw() and "hunter2" not in json.dumps(events(layout))


def test_a_refused_registry_edit_alerts_once_with_file_line_and_reason_and_again_when_fixed(
        tmp_path: Path, receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent", NOOP)
    proc = start_daemon(layout, daemon_env(tmp_path, MAESTRO_NOTIFY_URLS=receiver.url()))
    try:
        edit(layout.registry_file, NOOP + "timeout_seconds = -1\n")
        (refused,) = receiver.wait(1)
        assert refused["title"] == "maestro agent: cadences.toml edit refused (line 4)"
        first = refused["message"].splitlines()[0]
        assert first.startswith(f"{layout.registry_file}, line 4: [memo] timeout_seconds: ")
        assert first.endswith("; the daemon keeps its previous cadences until it is fixed")
        edit(layout.registry_file, '[memo]\nmode = "inline"\nhandler = \n')  # not TOML: the parser's line
        assert receiver.wait(2)[1]["title"] == "maestro agent: cadences.toml edit refused (line 3)"
        edit(layout.registry_file, NOOP)
        assert receiver.wait(3)[2]["title"] == "maestro agent: cadences.toml fixed"
        wait_for(lambda: stages(layout, "registry_fixed") == 1, what="the fix")
    finally:
        stop(proc)
    assert len(receiver.alerts) == 3
    assert stages(layout, "registry_invalid") == 2


def test_a_fix_lets_the_same_mistake_alert_again_and_each_fix_is_an_alert(layout: Layout, clock: Any,
                                                                          receiver: FakeReceiver) -> None:
    from maestro_py.bus.events import EventLog
    from maestro_py.daemon.alerts import Alerts
    from maestro_py.daemon.targets import targets_for
    from maestro_py.redact import Redactor

    alerts = Alerts(targets_for((receiver.url(),), None, layout.root, {}), agent="agent", redactor=Redactor({}),
                    notes=EventLog(layout, clock=clock), layout=layout, clock=clock)
    a = {"stage": "env_invalid", "error": "A='x': not a valid value", "file": "/r/.env", "line": 1}
    b = {**a, "error": "B='y': not a valid value", "line": 2}
    for event in (a, a, {"stage": "env_fixed"}, a, b, b, {"stage": "env_fixed"}):
        alerts.observe(event)
    assert alerts.flush(10)
    assert [x["title"] for x in receiver.alerts] == [
        "maestro agent: .env edit refused (line 1)", "maestro agent: .env fixed",
        "maestro agent: .env edit refused (line 1)", "maestro agent: .env edit refused (line 2)",
        "maestro agent: .env fixed"]


def test_every_refused_edit_rule_reads_a_sparse_event() -> None:
    for stage in ("env_invalid", "registry_invalid"):
        alert = RULES[stage]({"stage": stage, "error": "boom"})
        assert alert.title.endswith("edit refused") and alert.body.startswith((".env: boom", "cadences.toml: boom"))


def test_a_failed_service_sync_alerts_once(tmp_path: Path, receiver: FakeReceiver) -> None:
    """MAESTRO_SERVICE_AUTOSYNC with a systemctl that fails: `service_sync_failed` reaches the receiver, once."""
    root = example_agent(tmp_path / "agent")
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    fake_tool(bin_dir, "systemctl", tmp_path / "calls.log", home)
    env = daemon_env(tmp_path, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                     PATH=f"{bin_dir}:{os.environ['PATH']}", MAESTRO_NOTIFY_URLS=receiver.url(),
                     MAESTRO_SERVICE_AUTOSYNC="true")
    installed = maestro(Layout(root), "service", "install", "--systemd", "--user", "--claude", "/bin/true", env=env)
    assert installed.returncode == 0, installed.stderr
    (bin_dir / "systemctl").write_text('#!/bin/sh\ncase "$*" in *daemon-reload*) echo "no bus" >&2; exit 3;; esac\n')
    layout = Layout(root)
    proc = start_daemon(layout, env)
    try:
        drop_schedule(root, "heartbeat")
        (alert,) = receiver.wait(1, timeout=30)
        assert alert["title"] == "maestro agent: service sync failed" and alert["type"] == "warning"
        assert "`systemctl --user daemon-reload` exited 3" in alert["message"]
        wait_for(lambda: stages(layout, "service_sync_failed") == 1, what="the event")
    finally:
        stop(proc)
    assert len(receiver.alerts) == 1

