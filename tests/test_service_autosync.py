"""`MAESTRO_SERVICE_AUTOSYNC`: the daemon syncs the installed services when it reloads a changed `cadences.toml`
(an in-process daemon driven step by step with the fake clock; the sync's thread is joined, never slept on)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.daemon.loop import Daemon
from maestro_py.paths import Layout
from tests.fakes import FakeClock, FakeSpawner, events, invoke, make_daemon
from tests.service_support import drop_schedule, example_agent, fake_tool, snapshot


@pytest.fixture
def setup(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Layout, Path, Path]:
    """An agent whose services were installed with `service install --systemd --user` (fake systemctl on PATH)."""
    root = example_agent(tmp_path / "agent")
    dest = tmp_path / "home" / ".config" / "systemd" / "user"
    log = tmp_path / "calls.log"
    fake_tool(tmp_path / "bin", "systemctl", log, dest)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    result = invoke(runner, root, "service", "install", "--systemd", "--user", "--claude", "/bin/true")
    assert result.exit_code == 0, result.output
    return Layout(root), dest, log


def reload_and_sync(daemon: Daemon) -> None:
    """One step that reloads the registry (and starts the sync), the sync's end, one step that logs it."""
    daemon.step()
    daemon.autosync.wait(30)
    daemon.step()


def service_events(layout: Layout) -> list[dict]:
    return [e for e in events(layout) if e["stage"].startswith("service_sync")]


def test_the_daemon_removes_the_timer_of_a_cadence_that_lost_its_schedule(
        setup: tuple[Layout, Path, Path], clock: FakeClock) -> None:
    layout, dest, log = setup
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_SERVICE_AUTOSYNC="true")
    daemon.step()
    drop_schedule(layout.root, "heartbeat")
    reload_and_sync(daemon)
    assert not (dest / "maestro-agent-heartbeat.timer").exists()
    assert not (dest / "maestro-agent-heartbeat.service").exists()
    assert len(list(dest.iterdir())) == 6
    [event] = service_events(layout)
    assert event["stage"] == "service_synced" and event["level"] == "info"
    assert event["removed"] == ["maestro-agent-heartbeat.service", "maestro-agent-heartbeat.timer"]
    assert event["added"] == [] and event["commands_run"] is True
    assert log.read_text().splitlines() == ["--user disable --now maestro-agent-heartbeat.timer [8]",
                                            "--user daemon-reload [6]"]
    before = snapshot(dest)
    layout.registry_file.write_text(layout.registry_file.read_text() + "\n# a comment only\n")
    reload_and_sync(daemon)  # reloaded again, nothing to change: no event, nothing rewritten, nothing run
    assert len(service_events(layout)) == 1 and snapshot(dest) == before
    assert len(log.read_text().splitlines()) == 2


def test_autosync_is_off_by_default(setup: tuple[Layout, Path, Path], clock: FakeClock) -> None:
    layout, dest, log = setup
    daemon = make_daemon(layout, clock, FakeSpawner())
    daemon.step()
    drop_schedule(layout.root, "heartbeat")
    reload_and_sync(daemon)
    assert (dest / "maestro-agent-heartbeat.timer").exists() and service_events(layout) == []
    assert any(e["stage"] == "registry_reloaded" for e in events(layout))


def test_nothing_happens_where_no_service_was_installed(runner: CliRunner, tmp_path: Path,
                                                       clock: FakeClock) -> None:
    layout = Layout(example_agent(tmp_path / "agent"))
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_SERVICE_AUTOSYNC="true")
    daemon.step()
    drop_schedule(layout.root, "heartbeat")
    reload_and_sync(daemon)
    assert service_events(layout) == [] and not (tmp_path / "home" / ".config" / "systemd").exists()


def test_a_failing_sync_is_one_event_and_the_daemon_goes_on(setup: tuple[Layout, Path, Path], clock: FakeClock,
                                                            tmp_path: Path) -> None:
    layout, dest, log = setup
    (tmp_path / "bin" / "systemctl").write_text('#!/bin/sh\ncase "$*" in *daemon-reload*) exit 3;; esac\n')
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_SERVICE_AUTOSYNC="true")
    daemon.step()
    drop_schedule(layout.root, "heartbeat")
    reload_and_sync(daemon)
    [event] = service_events(layout)
    assert event["stage"] == "service_sync_failed" and event["level"] == "warn"
    assert event["reason"] == "`systemctl --user daemon-reload` exited 3"
    (dest / "maestro-agent-tidy.timer").write_text("[Timer]\nOnCalendar=daily\n")  # not ours, at a name it wants
    layout.registry_file.write_text(layout.registry_file.read_text()
                                    + '\n[tidy]\nmode = "inline"\nhandler = "noop"\nschedule = "@daily"\n')
    reload_and_sync(daemon)
    last = service_events(layout)[-1]
    assert last["stage"] == "service_sync_failed" and "maestro-agent-tidy.timer exists and was not generated" in \
        last["reason"] and "\n" not in last["reason"]
    assert (dest / "maestro-agent-tidy.timer").read_text() == "[Timer]\nOnCalendar=daily\n"
    assert daemon.step() is not None  # still stepping


def test_the_daemon_never_unloads_its_own_job(runner: CliRunner, tmp_path: Path, clock: FakeClock,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A launchd prefix changed in .env renames the daemon's own plist: that is for `maestro service sync`."""
    layout = Layout(example_agent(tmp_path / "agent"))
    dest = tmp_path / "home" / "Library" / "LaunchAgents"
    fake_tool(tmp_path / "bin", "launchctl", tmp_path / "calls.log", dest)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert invoke(runner, layout.root, "service", "install", "--launchd", "--claude", "/bin/true").exit_code == 0
    before = snapshot(dest)
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_SERVICE_AUTOSYNC="true",
                         MAESTRO_LAUNCHD_PREFIX="io.example.agents")
    daemon.step()
    drop_schedule(layout.root, "heartbeat")
    reload_and_sync(daemon)
    [event] = service_events(layout)
    assert event["stage"] == "service_sync_failed"
    assert event["reason"].startswith("com.maestro.agent.daemon.plist would be removed")
    assert snapshot(dest) == before and not (tmp_path / "calls.log").exists()


def test_reloads_during_a_sync_are_synced_after_it(setup: tuple[Layout, Path, Path], clock: FakeClock) -> None:
    layout, dest, log = setup
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_SERVICE_AUTOSYNC="true")
    daemon.step()
    started = []
    daemon.autosync._start = lambda registry: started.append(registry)  # type: ignore[method-assign]
    drop_schedule(layout.root, "heartbeat")
    daemon.step()
    assert len(started) == 1
    daemon.autosync._thread = type("Busy", (), {"is_alive": lambda self: True})()  # type: ignore[assignment]
    drop_schedule(layout.root, "inbox-processor")
    daemon.step()
    assert len(started) == 1 and daemon.autosync._pending is not None  # waits for the running one
    daemon.autosync._thread = None
    daemon.step()
    assert len(started) == 2 and started[1].get("inbox-processor").schedule is None
