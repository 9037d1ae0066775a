"""Alerts with real parts: apprise posting to a loopback receiver (`json://127.0.0.1:PORT/…`), real daemons,
real commands. What is shaped on the loop's side (dedupe, rate, batching, overflow) and what the loop pays."""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from maestro_py.bus.events import EventLog
from maestro_py.cli.common import EX_CONFIG
from maestro_py.bus.store import Bus
from maestro_py.clock import iso
from maestro_py.daemon.alerts import Alerts
from maestro_py.daemon.incidents import RULES, Alert, restarts
from maestro_py.daemon.targets import targets_for
from maestro_py.paths import Folder, Layout
from maestro_py.redact import MASK, Redactor
from tests.fakes import (
    SECRET, FakeClock, FakeReceiver, FakeSpawner, daemon_env, enqueue, events, invoke, make_daemon, maestro,
    one_line_error, run_steps, start_daemon, tick_ids, wait_for, write_agent,
)


def alerts_to(layout: Layout, clock: FakeClock, *urls: str, command: list[str] | None = None,
              env: dict[str, str] | None = None, **limits: int) -> Alerts:
    env = env or {"ANTHROPIC_API_KEY": SECRET}
    redactor = Redactor(env)
    return Alerts(targets_for(urls, command, layout.root, env), agent="agent", redactor=redactor,
                  notes=EventLog(layout, clock=clock, redactor=redactor), layout=layout, clock=clock, **limits)


def opened(cadence: str, until: str = "2026-11-23T12:30:00.000Z") -> dict[str, Any]:
    return {"stage": "circuit_opened", "cadence": cadence, "failures": 3, "open_until": until, "reason": "API 500"}


# -- what becomes an alert ------------------------------------------------------------------------------

def test_every_rule_makes_one_short_line_even_from_a_sparse_event() -> None:
    for stage, rule in RULES.items():
        alert = rule({"stage": stage})
        assert alert.title and "\n" not in alert.title and len(alert.title) < 120, stage
        assert alert.level in ("info", "success", "warning", "failure")


def test_secrets_are_masked_in_alerts_whatever_built_them(layout: Layout, clock: FakeClock,
                                                          receiver: FakeReceiver) -> None:
    alerts = alerts_to(layout, clock, receiver.url())
    log = EventLog(layout, clock=clock, redactor=alerts.redactor)
    log.listeners.append(alerts.observe)
    log.emit("auth_halt", level="error", cadence="memo", reason=f"401 for key {SECRET}", fix="edit .env")
    alerts.push(Alert("test", f"built with {SECRET}", f"body {SECRET} sk-ant-api03-abcdefghijkl", "info"))
    assert alerts.flush(10)
    assert len(receiver.alerts) == 2 and SECRET.encode() not in receiver.raw() and b"sk-ant-" not in receiver.raw()
    assert f"reason: 401 for key {MASK}" in receiver.alerts[0]["message"]


# -- shaping a flood --------------------------------------------------------------------------------------

def test_the_same_alert_is_sent_once_but_a_state_change_is_not_swallowed(layout: Layout, clock: FakeClock,
                                                                         receiver: FakeReceiver) -> None:
    alerts = alerts_to(layout, clock, receiver.url())
    for _ in range(5):
        alerts.observe(opened("flaky"))
    alerts.observe({"stage": "circuit_closed", "cadence": "flaky"})
    alerts.observe(opened("flaky"))      # opened again after closing: news
    alerts.observe(opened("other"))      # another cadence: news
    assert alerts.flush(10)
    titles = [a["title"] for a in receiver.alerts]
    assert titles == ["maestro agent: circuit opened: flaky", "maestro agent: circuit closed: flaky",
                      "maestro agent: circuit opened: flaky", "maestro agent: circuit opened: other"]
    assert alerts.stats["deduplicated"] == 4
    clock.advance(601)  # past the dedupe window the same alert goes out again
    alerts.observe(opened("other"))
    assert alerts.flush(10) and len(receiver.alerts) == 5


def test_a_flood_is_rate_limited_and_the_next_alert_says_how_many_were_dropped(
        layout: Layout, clock: FakeClock, receiver: FakeReceiver) -> None:
    alerts = alerts_to(layout, clock, receiver.url(), rate_per_minute=5)
    for i in range(12):
        alerts.observe(opened(f"c{i}"))
    assert alerts.flush(10)
    assert len(receiver.alerts) == 5 and alerts.stats["rate_limited"] == 7
    clock.advance(60)
    alerts.observe(opened("late"))
    assert alerts.flush(10)
    last = receiver.alerts[-1]
    assert "late" in last["title"] and "(7 earlier alerts dropped by the rate limit)" in last["message"]


def test_a_full_queue_drops_its_oldest(layout: Layout, clock: FakeClock) -> None:
    hanging = FakeReceiver("hang")
    try:
        alerts = alerts_to(layout, clock, hanging.url(), queue_max=3)
        alerts.observe(opened("first"))  # the sender takes it and waits on the receiver
        wait_for(lambda: hanging.connections == 1, what="the first send")
        started = time.monotonic()
        for i in range(10):
            alerts.observe(opened(f"c{i}"))
        assert time.monotonic() - started < 0.05  # queuing never waits on the stuck send
        assert alerts.stats["dropped_overflow"] == 7
        assert [a.fields["cadence"] for a in alerts._queue] == ["c7", "c8", "c9"]
    finally:
        hanging.stop()


def test_a_failing_target_is_reported_once_not_per_alert(layout: Layout, clock: FakeClock,
                                                         receiver: FakeReceiver) -> None:
    refused = FakeReceiver("refuse")
    alerts = alerts_to(layout, clock, refused.url(), receiver.url())
    for i in range(4):
        alerts.observe(opened(f"c{i}"))
    assert alerts.flush(10)
    assert len(receiver.alerts) == 4  # the working target got everything
    failed = [e for e in events(layout) if e["stage"] == "alert_failed"]
    assert len(failed) == 1 and failed[0]["target"] == "target 1 (json)" and failed[0]["kind"] == "circuit_opened"
    assert alerts.stats["failed"] == 4 and alerts.stats["sent"] == 4
    text = json.dumps(events(layout))
    assert str(refused.port) not in text and "alerts-hook" not in text  # the URL is a secret


def test_the_notify_command_reads_the_alert_as_json_without_credentials(layout: Layout, clock: FakeClock,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    script = ("import json, os, sys; doc = json.load(sys.stdin); doc['env'] = sorted(os.environ); "
              f"open({str(out)!r}, 'w').write(json.dumps(doc))")
    env = {"ANTHROPIC_API_KEY": SECRET, "MAESTRO_NOTIFY_URLS": "json://127.0.0.1:9/x", "PATH": os.environ["PATH"]}
    alerts = alerts_to(layout, clock, command=[sys.executable, "-c", script], env=env)
    alerts.observe(opened("flaky"))
    assert alerts.flush(10)
    doc = json.loads(out.read_text())
    assert doc["kind"] == "circuit_opened" and doc["agent"] == "agent" and doc["level"] == "failure"
    assert doc["fields"] == {"cadence": "flaky", "until": "2026-11-23T12:30:00.000Z", "reason": "API 500",
                             "failures": 3}
    assert "ANTHROPIC_API_KEY" not in doc["env"] and "MAESTRO_NOTIFY_URLS" not in doc["env"]


def test_a_hung_command_is_ended_at_its_timeout(layout: Layout, clock: FakeClock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("maestro_py.daemon.alerts.SEND_TIMEOUT", 0.5)
    alerts = alerts_to(layout, clock, command=["sleep", "30"], env={"PATH": os.environ["PATH"]})
    started = time.monotonic()
    alerts.observe(opened("flaky"))
    assert alerts.flush(10)
    assert time.monotonic() - started < 5
    (failed,) = [e for e in events(layout) if e["stage"] == "alert_failed"]
    assert failed["target"] == "command" and "timed out after 0.5s" in failed["error"]


# -- the daemon's alerts ------------------------------------------------------------------------------------

def test_an_auth_halt_reset_by_hand_is_lifted_in_an_alert_too(layout: Layout, clock: FakeClock, runner: CliRunner,
                                                              receiver: FakeReceiver) -> None:
    write_agent(layout, prompts={"memo": "Write it. [[fake:401]]"})
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_NOTIFY_URLS=receiver.url())
    enqueue(layout, clock, "memo")
    run_steps(daemon, 3)
    assert invoke(runner, layout.root, "circuit", "reset", "--all").exit_code == 0
    run_steps(daemon, 1)  # the daemon reads the file again (`circuits_reloaded`)
    assert daemon.alerts is not None and daemon.alerts.flush(10)
    halted, lifted = receiver.alerts[:2]
    assert halted["title"] == "maestro agent: auth halt: no sub-session spawns"
    assert lifted["title"] == "maestro agent: auth halt lifted" and "reset by hand" in lifted["message"]


def test_twenty_dead_letters_within_a_minute_send_one_alert_with_the_count(tmp_path: Path,
                                                                         receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent", '[broken]\nmode = "inline"\nhandler = "false"\nmax_attempts = 1\n')
    bus = Bus(layout)
    for i in range(20):
        bus.enqueue("broken", payload={"n": i})
    started = time.monotonic()
    out = maestro(layout, "run", "--once", env=daemon_env(tmp_path, MAESTRO_NOTIFY_URLS=receiver.url()))
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 20
    assert len(tick_ids(layout, Folder.DLQ)) == 20
    (alert,) = receiver.alerts  # held back to gather the others, and sent at the end of `run --once`
    assert alert["title"] == "maestro agent: 20 ticks dead-lettered: broken"
    assert "count: 20" in alert["message"] and "exited with status 1" in alert["message"]


def test_a_normal_stop_delivers_a_pending_alert(tmp_path: Path, receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent", '[broken]\nmode = "inline"\nhandler = "false"\nmax_attempts = 1\n')
    proc = start_daemon(layout, daemon_env(tmp_path, MAESTRO_NOTIFY_URLS=receiver.url()))
    try:
        tick = Bus(layout).enqueue("broken")
        wait_for(lambda: tick.id in tick_ids(layout, Folder.DLQ), what="the dead letter")
        time.sleep(0.2)
        assert receiver.alerts == []  # its batch waits a minute for company
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    (alert,) = receiver.alerts
    assert alert["title"] == "maestro agent: 1 tick dead-lettered: broken"


def test_a_run_past_its_timeout_is_an_alert(tmp_path: Path, receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent", "[slow]\ntimeout_seconds = 1\nmax_attempts = 1\n",
                         {"slow": "Take your time. [[fake_claude:sleep:30]]"})
    Bus(layout).enqueue("slow")
    out = maestro(layout, "run", "--once", env=daemon_env(tmp_path, MAESTRO_NOTIFY_URLS=receiver.url()))
    assert out.returncode == 0, out.stderr
    timed_out = [a for a in receiver.alerts if "run timed out" in a["title"]]
    assert len(timed_out) == 1 and "slow" in timed_out[0]["title"] and "timeout_s: 1.0" in timed_out[0]["message"]
    assert [e["stage"] for e in events(layout)].count("run_timed_out") == 1


def test_a_crash_loop_is_one_alert(tmp_path: Path, receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent", prompts={"memo": "Write it."})
    env = daemon_env(tmp_path, MAESTRO_NOTIFY_URLS=receiver.url())
    for n in (1, 2):  # killed twice: no clean stop
        proc = start_daemon(layout, env)
        wait_for(lambda: [e["stage"] for e in events(layout, lenient=True)].count("daemon_started") == n,
                 what="the daemon's start")
        proc.kill()
        proc.wait(timeout=10)
    assert receiver.alerts == []
    assert maestro(layout, "run", "--once", env=env).returncode == 0  # the third start
    (alert,) = receiver.alerts
    assert alert["title"] == "maestro agent: daemon crash loop" and "started 3 times in 600" in alert["message"]
    assert maestro(layout, "run", "--once", env=env).returncode == 0  # after a clean stop: no loop
    assert len(receiver.alerts) == 1


def test_a_crash_loop_is_reported_once_however_long_it_lasts(layout: Layout) -> None:
    now = datetime.now(timezone.utc)
    log = layout.event_log(now.astimezone())
    log.parent.mkdir(parents=True, exist_ok=True)

    def line(stage: str, ago: float) -> str:
        return json.dumps({"ts": iso(now - timedelta(seconds=ago)), "stage": stage}) + "\n"

    log.write_text(line("daemon_started", 900) + line("daemon_started", 500) + line("daemon_started", 60)
                   + line("daemon_started", 30))
    assert restarts(layout, now) == 3  # the one 900 s ago is out of the window
    log.write_text(log.read_text() + line("crash_loop", 29) + line("daemon_started", 10))
    assert restarts(layout, now) == 0  # reported already
    log.write_text(log.read_text() + line("daemon_stopped", 5) + line("daemon_started", 1))
    assert restarts(layout, now) == 1


def test_a_soft_budget_threshold_warns_once_per_scope_and_window(layout: Layout, clock: FakeClock,
                                                                 receiver: FakeReceiver) -> None:
    write_agent(layout, prompts={"memo": "Write it."})
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_DAILY_TOKEN_BUDGET=4000, MAESTRO_RESERVE_TOKENS=100,
                         MAESTRO_NOTIFY_URLS=receiver.url())
    for i in range(3):  # 1,290 tokens a run: 32 %, 65 %, 97 %
        enqueue(layout, clock, "memo", payload={"n": i})
        run_steps(daemon, 5)
    warnings = [e for e in events(layout) if e["stage"] == "budget_warning"]
    assert len(warnings) == 1
    assert (warnings[0]["scope"], warnings[0]["window"], warnings[0]["used_pct"]) == ("global", "daily", 97)
    assert daemon.alerts is not None and daemon.alerts.flush(10)
    (alert,) = receiver.alerts
    assert alert["title"] == "maestro agent: budget 97% spent: global daily" and "MAESTRO_BUDGET_WARN_AT" in \
        alert["message"]


def test_alert_targets_and_the_warning_threshold_follow_an_edit_of_env(layout: Layout, clock: FakeClock,
                                                                      receiver: FakeReceiver) -> None:
    write_agent(layout, prompts={"memo": "Write it."})
    daemon = make_daemon(layout, clock, FakeSpawner())
    assert daemon.alerts is None
    other = FakeReceiver()
    try:
        for url in (receiver.url(), other.url()):
            layout.env_file.write_text(f"MAESTRO_NOTIFY_URLS={url}\nMAESTRO_BUDGET_WARN_AT=0.5\n")
            st = layout.env_file.stat()
            os.utime(layout.env_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime, surely
            run_steps(daemon, 1)
            assert daemon.alerts is not None
            daemon.events.emit("io_error", level="error", error=f"OSError: disk full ({url[-4:]})", action="retry")
            clock.advance(601)  # past the dedupe window
            assert daemon.alerts.flush(10)
        assert [a["title"] for a in receiver.alerts] == [a["title"] for a in other.alerts] == \
            ["maestro agent: disk trouble"]
        assert daemon.settler.warn_at() == 0.5 and daemon.restart_required == []
        shown = daemon.settings.in_force()["MAESTRO_NOTIFY_URLS"]
        assert shown == [f"json://{MASK}"]  # what `status --json` shows: the scheme, never a token
    finally:
        other.stop()


# -- the loop never waits on a send ------------------------------------------------------------------------

STAMP = '[stamp]\nmode = "inline"\nhandler = "noop"\n[broken]\nmode = "inline"\nhandler = "false"\nmax_attempts = 1\n'


def test_a_hanging_or_refusing_receiver_does_not_slow_the_loop(tmp_path: Path) -> None:
    """Pickup latency (enqueue -> done of an inline tick, from the `done` event's timestamp) of three daemons: no
    alerts, a receiver that accepts and never answers, one that refuses. They take turns tick by tick, so the
    machine's noise falls on all three alike. Each tick follows a dead letter (whose alert the loop queues), and a
    crash-loop alert is pending from the start, so the hanging receiver holds the sender throughout."""
    hanging, refused = FakeReceiver("hang"), FakeReceiver("refuse")
    kinds = {"none": {}, "hang": {"MAESTRO_NOTIFY_URLS": hanging.url()},
             "refuse": {"MAESTRO_NOTIFY_URLS": refused.url()}}
    now = datetime.now(timezone.utc)
    seeded = "".join(json.dumps({"ts": iso(now - timedelta(seconds=s)), "stage": "daemon_started"}) + "\n"
                     for s in (20, 10))
    roots, procs, sent = {}, [], {kind: {} for kind in kinds}
    try:
        for kind, env in kinds.items():
            layout = roots[kind] = write_agent(tmp_path / kind, STAMP)
            layout.event_log(now.astimezone()).write_text(seeded)
            procs.append(start_daemon(layout, daemon_env(tmp_path, **env)))
        buses = {kind: Bus(layout, max_inbox=10_000) for kind, layout in roots.items()}
        for i in range(-5, 30):  # five to warm up
            for kind in (list(kinds)[i % 3:] + list(kinds)[:i % 3]):  # who goes first rotates
                layout, bus = roots[kind], buses[kind]
                bus.enqueue("broken", payload={"i": i})
                time.sleep(0.02)
                t = time.time()
                tick = bus.enqueue("stamp", payload={"i": i})
                if i >= 0:
                    sent[kind][tick.id] = t
                wait_for(lambda: tick.id in tick_ids(layout, Folder.DONE), timeout=10, interval=0.005,
                         what="the stamp tick")
        assert hanging.connections >= 1  # the sender was stuck on it while the ticks ran
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        hanging.stop()
    p50 = {}
    for kind, layout in roots.items():
        done = {e["id"]: datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                for e in events(layout) if e["stage"] == "done" and e["id"] in sent[kind]}
        p50[kind] = round(statistics.median((done[k] - t) * 1000 for k, t in sent[kind].items()), 2)
    print(f"pickup p50 ms: {p50}")  # pytest -s shows the figures
    for kind in ("hang", "refuse"):
        assert p50[kind] < 2 * p50["none"] + 50, p50


# -- maestro notify test -----------------------------------------------------------------------------------

def test_notify_test_sends_one_alert_and_exits_0(runner: CliRunner, tmp_path: Path, receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent")
    result = invoke(runner, layout.root, "notify", "test", env={"MAESTRO_NOTIFY_URLS": receiver.url()})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok   target 1 (json)"
    (alert,) = receiver.alerts
    assert alert["title"] == "maestro agent: test alert" and alert["type"] == "info"


def test_notify_test_names_the_failed_target_in_one_line_without_its_url(runner: CliRunner, tmp_path: Path,
                                                                        receiver: FakeReceiver) -> None:
    layout = write_agent(tmp_path / "agent")
    refused = FakeReceiver("refuse")
    urls = f"{receiver.url()}, {refused.url('/TokenB-secret-path')}"
    result = invoke(runner, layout.root, "notify", "test", env={"MAESTRO_NOTIFY_URLS": urls})
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith("maestro: notify test: 1 of 2 targets failed: target 2 (json): ")
    assert str(refused.port) not in line and "TokenB" not in line
    assert len(receiver.alerts) == 1  # the working target still got it


def test_notify_test_without_a_target_says_what_to_set(runner: CliRunner, tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent")
    result = invoke(runner, layout.root, "notify", "test")
    assert result.exit_code == 1 and "MAESTRO_NOTIFY_URLS" in one_line_error(result)


def test_a_bad_notify_url_is_a_config_error_that_does_not_quote_it(runner: CliRunner, tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent")
    result = invoke(runner, layout.root, "notify", "test",
                    env={"MAESTRO_NOTIFY_URLS": "json://127.0.0.1/x hooks-TokenSecret99"})
    assert result.exit_code == EX_CONFIG
    line = one_line_error(result)
    assert "item 2 is not an apprise URL" in line and "TokenSecret99" not in line


@pytest.mark.parametrize("halt, lift, title", [
    ("claude_missing", "claude_found", "claude missing: no sub-session spawns"),
    ("governor_unavailable", "governor_available", "governor unavailable: no sub-session spawns"),
])
def test_a_halt_of_every_spawn_and_its_lift_are_alerts(layout: Layout, clock: FakeClock, receiver: FakeReceiver,
                                                       halt: str, lift: str, title: str) -> None:
    alerts = alerts_to(layout, clock, receiver.url())
    log = EventLog(layout, clock=clock, redactor=alerts.redactor)
    log.listeners.append(alerts.observe)
    log.emit(halt, level="error", reason="spawn failed: [Errno 2] No such file", path="/usr/bin/claude",
             store="sqlite:////tmp/g.db", effect="no sub-session spawns until the store answers", fix="set CLAUDE_BIN")
    log.emit(halt, level="error", reason="again")  # the same halt again: deduplicated
    log.emit(lift, level="warn", reason="the claude binary can be found now")
    log.emit(halt, level="error", reason="gone again")  # after its lift: news
    assert alerts.flush(10)
    assert [a["title"] for a in receiver.alerts] == [f"maestro agent: {title}", f"maestro agent: {lift.replace('_', ' ')}",
                                                     f"maestro agent: {title}"]


def test_a_claude_halt_reset_by_hand_is_lifted_in_an_alert(layout: Layout, clock: FakeClock,
                                                          receiver: FakeReceiver) -> None:
    alerts = alerts_to(layout, clock, receiver.url())
    alerts.observe({"stage": "claude_missing", "reason": "not found"})
    alerts.observe({"stage": "circuits_reloaded", "open": []})  # `maestro circuit reset --all`
    assert alerts.flush(10)
    assert [a["title"] for a in receiver.alerts][-1] == "maestro agent: claude found"
