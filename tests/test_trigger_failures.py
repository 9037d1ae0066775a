"""A trigger that could not deliver its tick (issue 26, item 4b): `maestro enqueue` exiting non-zero records a
`trigger_failed` event and the file a running daemon alerts from; systemd's OnFailure= handler (`maestro notify
trigger-failed`, run here as the generated template unit would run it) records what enqueue could not. Real
`maestro` processes, a real daemon, apprise to the loopback receiver."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from maestro_py.bus import trigger_failures
from maestro_py.paths import Folder, Layout
from maestro_py.service import units as svc
from tests.fakes import (
    REPO, FakeReceiver, daemon_env, events, maestro, start_daemon, tick_ids, wait_for, write_agent,
)

NOOP = '[memo]\nmode = "inline"\nhandler = "noop"\nschedule = "*/5 * * * *"\n'
KEY = "sk-ant-api03-PAYLOADSECRET0123456789"


def failures(layout: Layout) -> list[dict[str, Any]]:
    return [e for e in events(layout, lenient=True) if e["stage"] == "trigger_failed"]


def full_inbox(tmp_path: Path, receiver: FakeReceiver) -> tuple[Layout, dict[str, str]]:
    """An agent whose inbox holds its one allowed tick (delayed an hour, so the daemon leaves it there)."""
    layout = write_agent(tmp_path / "agent", NOOP, files={".env": "MAESTRO_MAX_INBOX=1\n"})
    env = daemon_env(tmp_path, MAESTRO_NOTIFY_URLS=receiver.url())
    assert maestro(layout, "enqueue", "memo", "--delay", "3600", env=env).returncode == 0
    return layout, env


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_a_failed_enqueue_is_one_event_and_one_alert_of_the_running_daemon(tmp_path: Path,
                                                                           receiver: FakeReceiver) -> None:
    layout, env = full_inbox(tmp_path, receiver)
    proc = start_daemon(layout, env)
    try:
        full = maestro(layout, "enqueue", "memo", "--source", "systemd", env=env)
        assert full.returncode == 75 and "inbox is full" in full.stderr
        (alert,) = receiver.wait(1)
        assert alert["title"] == "maestro agent: trigger failed: memo" and alert["type"] == "failure"
        assert alert["message"].splitlines()[0] == (
            "a tick of memo was not delivered (systemd): inbox is full (1 ticks, MAESTRO_MAX_INBOX=1); try again later")
        assert "exit_code: 75" in alert["message"] and "source: systemd" in alert["message"]
        assert maestro(layout, "enqueue", "memo", "--source", "systemd", env=env).returncode == 75  # the next fire
        unknown = maestro(layout, "enqueue", "nosuch", "--source", "cron", env=env)
        assert unknown.returncode == 2
        bad = maestro(layout, "enqueue", "memo", "--payload", '{"key": "' + KEY, env=env)  # torn JSON
        assert bad.returncode == 2
        receiver.wait(3)
        wait_for(lambda: not list(layout.trigger_failures_dir.glob("*.json")), what="the daemon to take them")
    finally:
        stop(proc)
    recorded = failures(layout)
    assert [(e["cadence"], e["exit_code"], e["source"]) for e in recorded] == [
        ("memo", 75, "systemd"), ("memo", 75, "systemd"), ("nosuch", 2, "cron"), ("memo", 2, "cli")]
    assert all(e["level"] == "error" and e["alerted"] is True for e in recorded)
    assert "unknown cadence 'nosuch'" in recorded[2]["reason"]
    assert [a["title"].removeprefix("maestro agent: ") for a in receiver.alerts] == [
        "trigger failed: memo", "trigger failed: nosuch", "trigger failed: memo"]  # the second full inbox: deduped
    assert "--payload is not valid JSON" in receiver.alerts[2]["message"]
    text = json.dumps(events(layout))
    assert KEY not in text and "PAYLOADSECRET" not in text and b"PAYLOADSECRET" not in receiver.raw()
    assert tick_ids(layout, Folder.INBOX) and len(tick_ids(layout, Folder.INBOX)) == 1  # nothing else delivered


def test_failures_while_the_daemon_is_down_are_alerted_when_it_starts(tmp_path: Path,
                                                                      receiver: FakeReceiver) -> None:
    layout, env = full_inbox(tmp_path, receiver)
    for _ in range(3):
        assert maestro(layout, "enqueue", "memo", "--source", "systemd", env=env).returncode == 75
    assert len(list(layout.trigger_failures_dir.glob("*.json"))) == 3
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    (alert,) = receiver.alerts  # three of the same failure: one alert
    assert alert["title"] == "maestro agent: trigger failed: memo"
    assert list(layout.trigger_failures_dir.iterdir()) == []  # taken, not alerted again at the next start
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    assert len(receiver.alerts) == 1


def test_at_a_terminal_a_failure_is_recorded_but_not_alerted(tmp_path: Path, receiver: FakeReceiver) -> None:
    """A person who runs `maestro enqueue` by hand reads its error there and then; a timer's failure has no reader."""
    layout, env = full_inbox(tmp_path, receiver)
    primary, secondary = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "enqueue", "memo"],
                              env=env, stdout=subprocess.PIPE, stderr=secondary, timeout=60, cwd=REPO)
    finally:
        os.close(secondary)
        os.close(primary)
    assert done.returncode == 75
    (event,) = failures(layout)
    assert event["alerted"] is False and event["exit_code"] == 75
    assert not layout.trigger_failures_dir.exists() or not list(layout.trigger_failures_dir.glob("*.json"))


def test_a_folder_that_is_not_an_agent_root_gets_nothing_made_in_it(tmp_path: Path) -> None:
    stray = tmp_path / "not-an-agent"
    stray.mkdir()
    out = maestro(Layout(stray), "enqueue", "memo", env=daemon_env(tmp_path))
    assert out.returncode == 78 and "not an agent root" in out.stderr
    assert list(stray.iterdir()) == []


def test_pending_failures_are_bounded(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", NOOP)
    for i in range(trigger_failures.MAX_PENDING + 5):
        trigger_failures.record(layout, cadence="memo", reason=f"boom {i}", exit_code=1, source="cron")
    assert len(list(layout.trigger_failures_dir.glob("*.json"))) == trigger_failures.MAX_PENDING
    assert len(failures(layout)) == trigger_failures.MAX_PENDING + 5  # every one is in the event log
    taken = trigger_failures.take(layout)
    assert [t["reason"] for t in taken[:2]] == ["boom 0", "boom 1"] and not list(layout.trigger_failures_dir.iterdir())
    layout.trigger_failures_dir.rmdir()
    layout.trigger_failures_dir.write_text("not a folder")
    assert trigger_failures.take(layout) == []  # the daemon's loop is never interrupted by it


# -- systemd's OnFailure= ------------------------------------------------------------------------------------


def on_failure_argv(layout: Layout, cadence: str) -> list[str]:
    """What systemd runs when the trigger of `cadence` fails: the oneshot's OnFailure= instance of the generated
    template, its ExecStart with `%i` expanded (the generator's own output, not a copy of it)."""
    spec = svc.ServiceSpec(root=layout.root, python=sys.executable, name="agent", schedules=(("memo", "*/5 * * * *"),),
                           stop_timeout=50)
    files = {f.name: f.content for f in svc.systemd_files(spec)}
    oneshot = files["maestro-agent-memo.service"].splitlines()
    assert f"OnFailure=maestro-agent.trigger-failed@{cadence}.service" in oneshot
    template = files["maestro-agent.trigger-failed@.service"].splitlines()
    (line,) = [x for x in template if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart=").replace("%i", cadence))


def monitor(unit: str, invocation: str, result: str, code: str, status: str) -> dict[str, str]:
    """The variables systemd gives an OnFailure= unit about the unit that failed (systemd.exec(5): one triggering
    unit per handler, hence the template with one instance per cadence)."""
    return {"MONITOR_UNIT": unit, "MONITOR_INVOCATION_ID": invocation, "MONITOR_SERVICE_RESULT": result,
            "MONITOR_EXIT_CODE": code, "MONITOR_EXIT_STATUS": status}


def test_systemds_on_failure_handler_records_what_enqueue_could_not_and_nothing_twice(
        tmp_path: Path, receiver: FakeReceiver) -> None:
    layout, env = full_inbox(tmp_path, receiver)
    argv = on_failure_argv(layout, "memo")
    proc = start_daemon(layout, env)
    try:
        # enqueue failed and recorded it (systemd gives every service its INVOCATION_ID): the handler adds nothing
        failed = subprocess.run([*argv[:argv.index("notify")], "enqueue", "memo", "--source", "systemd"],
                                env={**env, "INVOCATION_ID": "0f1e2d3c"}, capture_output=True, text=True,
                                timeout=60, cwd=REPO)
        assert failed.returncode == 75
        handler = subprocess.run(argv, env={**env, **monitor("maestro-agent-memo.service", "0f1e2d3c", "exit-code",
                                                             "exited", "75")},
                                 capture_output=True, text=True, timeout=60, cwd=REPO)
        assert handler.returncode == 0 and "already recorded by maestro enqueue" in handler.stdout, handler.stderr
        receiver.wait(1)
        # enqueue was killed before it could say anything: the handler records it
        killed = subprocess.run(argv, env={**env, **monitor("maestro-agent-memo.service", "9a8b7c6d", "signal",
                                                            "killed", "KILL")},
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert killed.returncode == 0 and killed.stdout.startswith("recorded: "), killed.stderr
        receiver.wait(2)
    finally:
        stop(proc)
    recorded = failures(layout)
    assert [(e["invocation"], e.get("exit_code")) for e in recorded] == [("0f1e2d3c", 75), ("9a8b7c6d", None)]
    assert recorded[1]["reason"] == "maestro-agent-memo.service failed (signal, killed KILL)"
    assert recorded[1]["unit"] == "maestro-agent-memo.service" and recorded[1]["source"] == "systemd"
    titles = [a["title"] for a in receiver.alerts]
    assert titles == ["maestro agent: trigger failed: memo"] * 2
    assert "maestro-agent-memo.service failed (signal, killed KILL)" in receiver.alerts[1]["message"]


def test_without_systemds_invocation_id_a_recent_record_of_the_cadence_is_the_same_failure(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", NOOP)
    env = daemon_env(tmp_path)
    argv = on_failure_argv(layout, "memo")
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert first.returncode == 0 and first.stdout == "recorded: the trigger of memo failed\n", first.stderr
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "already recorded" in again.stdout and len(failures(layout)) == 1
