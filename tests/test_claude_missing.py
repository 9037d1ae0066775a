"""A missing or broken `claude` halts spawning (like the auth halt) instead of dead-lettering every tick."""

from __future__ import annotations

from pathlib import Path

from maestro_py.daemon.loop import Daemon
from maestro_py.paths import Folder, Layout
from maestro_py.policy.breaker import CLAUDE_MISSING
from maestro_py.session.runner import ProcessSpawner
from tests.fakes import (
    FakeClock, attempts, enqueue, events, fast_fake_claude, invoke, make_daemon, read_json, run_steps, tick_ids,
    wait_for, write_agent,
)

AGENT = "[beat]\nmode = 'inline'\nhandler = 'noop'\n"


def _halt_events(layout: Layout) -> list[dict]:
    return [e for e in events(layout) if e["stage"] == "claude_missing"]


def _settle(daemon: Daemon, layout: Layout, n: int) -> None:
    """Step the daemon until `n` ticks are in done/ (real sub-sessions finish on their own time)."""
    wait_for(lambda: (daemon.step(), len(tick_ids(layout, Folder.DONE)) >= n)[1], what=f"{n} ticks done")


def test_a_missing_claude_halts_spawning_without_burning_attempts_and_resumes_when_it_appears(
        layout: Layout, clock: FakeClock, tmp_path: Path) -> None:
    write_agent(layout, AGENT, {"memo": "write the memo", "brief": "write the brief"})
    claude = tmp_path / "bin" / "claude"  # not there yet
    daemon = make_daemon(layout, clock, ProcessSpawner(), CLAUDE_BIN=claude, MAESTRO_MAX_ATTEMPTS=2,
                         MAESTRO_MAX_LIVE_SUBSESSIONS=4)
    memo = enqueue(layout, clock, "memo", 2)
    brief = enqueue(layout, clock, "brief", 2)
    beat = enqueue(layout, clock, "beat", 1)
    for _ in range(4):  # ticks over an hour: today each of them would be dead-lettered
        run_steps(daemon, 10)
        clock.advance(900)
    assert tick_ids(layout, Folder.DLQ) == []
    assert tick_ids(layout, Folder.DONE) == beat  # inline work still runs
    assert all(attempts(layout, t) == 0 for t in memo + brief)
    halts = _halt_events(layout)
    assert len(halts) == 1  # one clear event, not one per tick or per step
    assert halts[0]["path"] == str(claude) and "CLAUDE_BIN" in halts[0]["fix"]
    halt = read_json(layout.circuit_file)["open"][CLAUDE_MISSING]
    assert halt["open_until"] is None and str(claude) in halt["last_error"]
    assert daemon.counters["skipped_claude_missing"] > 0
    assert daemon.counters["dlq"] == 0
    # The binary appears: the halt lifts within a few seconds, without a restart, and every tick runs.
    claude.parent.mkdir()
    fast_fake_claude(claude.parent)
    clock.advance(5)
    _settle(daemon, layout, 5)
    assert not layout.circuit_file.exists()
    assert any(e["stage"] == "claude_found" for e in events(layout))
    assert len(_halt_events(layout)) == 1


def test_a_claude_that_is_not_a_program_halts_until_it_is_replaced(layout: Layout, clock: FakeClock,
                                                                  tmp_path: Path) -> None:
    write_agent(layout, prompts={"memo": "write the memo"})
    claude = tmp_path / "claude"
    claude.write_bytes(b"\x7fELF\x02garbage for another machine")
    claude.chmod(0o755)  # found and executable: only exec can tell (ENOEXEC)
    daemon = make_daemon(layout, clock, ProcessSpawner(), CLAUDE_BIN=claude, MAESTRO_MAX_ATTEMPTS=2)
    memo = enqueue(layout, clock, "memo", 3)
    for _ in range(3):
        run_steps(daemon, 10)
        clock.advance(60)
    assert tick_ids(layout, Folder.DLQ) == [] and all(attempts(layout, t) == 0 for t in memo)
    halts = _halt_events(layout)
    assert len(halts) == 1 and "exec format error" in halts[0]["reason"]  # the same file is not retried
    claude.unlink()
    fast_fake_claude(tmp_path)
    clock.advance(5)
    _settle(daemon, layout, 3)
    assert not layout.circuit_file.exists()


def test_a_claude_whose_interpreter_is_missing_halts_like_a_missing_claude(layout: Layout, clock: FakeClock,
                                                                          tmp_path: Path) -> None:
    """A node CLI under launchd's bare PATH: `env` exits 127 before the CLI starts, with no result line."""
    write_agent(layout, prompts={"memo": "write the memo", "brief": "write the brief"})
    claude = tmp_path / "claude"
    claude.write_text("#!/usr/bin/env maestro-test-no-such-node\n")
    claude.chmod(0o755)
    daemon = make_daemon(layout, clock, ProcessSpawner(), CLAUDE_BIN=claude, MAESTRO_MAX_ATTEMPTS=2)
    ticks = enqueue(layout, clock, "memo", 2) + enqueue(layout, clock, "brief", 2)
    wait_for(lambda: (daemon.step(), _halt_events(layout))[1], what="the claude halt")
    for _ in range(3):
        run_steps(daemon, 10)
        clock.advance(60)
    assert tick_ids(layout, Folder.DLQ) == [] and all(attempts(layout, t) == 0 for t in ticks)
    [halt] = _halt_events(layout)
    assert "exited 127" in halt["reason"] and "maestro-test-no-such-node" in halt["reason"]
    claude.unlink()
    fast_fake_claude(tmp_path)
    clock.advance(5)
    _settle(daemon, layout, 4)


def test_the_claude_halt_survives_a_restart_and_shows_in_status_list_and_reset(
        layout: Layout, clock: FakeClock, tmp_path: Path, runner) -> None:
    write_agent(layout, prompts={"memo": "write the memo"})
    missing = tmp_path / "nowhere" / "claude"
    daemon = make_daemon(layout, clock, ProcessSpawner(), CLAUDE_BIN=missing)
    memo = enqueue(layout, clock, "memo", 1)
    run_steps(daemon, 5)
    restarted = make_daemon(layout, clock, ProcessSpawner(), CLAUDE_BIN=missing)
    run_steps(restarted, 5)
    clock.advance(10)
    run_steps(restarted, 5)
    assert len(_halt_events(layout)) == 1 and restarted.counters["skipped_claude_missing"] > 0
    assert attempts(layout, memo[0]) == 0
    listed = invoke(runner, layout.root, "circuit", "list")
    assert "CLAUDE MISSING" in listed.stdout and str(missing) in listed.stdout
    shown = invoke(runner, layout.root, "status", env={"CLAUDE_BIN": str(missing)})
    assert "CLAUDE MISSING" in shown.stdout and "CLAUDE_BIN" in shown.stdout
    assert read_json_status(invoke(runner, layout.root, "status", "--json").stdout)["claude_missing"] is True
    assert invoke(runner, layout.root, "circuit", "reset", CLAUDE_MISSING).exit_code == 0
    assert not layout.circuit_file.exists()


def read_json_status(text: str) -> dict:
    import json

    return json.loads(text)


def test_doctor_fails_on_a_missing_or_broken_claude_and_on_the_halt(layout: Layout, clock: FakeClock,
                                                                     tmp_path: Path, runner) -> None:
    write_agent(layout, prompts={"memo": "write the memo"})
    missing = tmp_path / "nowhere" / "claude"
    result = invoke(runner, layout.root, "doctor", "--offline", env={"CLAUDE_BIN": str(missing)})
    assert result.exit_code == 1
    [claude_line] = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["claude"]]
    assert claude_line.startswith("fail") and str(missing) in claude_line
    broken = tmp_path / "broken-claude"
    broken.write_bytes(b"\x7fELF\x02garbage")
    broken.chmod(0o755)
    result = invoke(runner, layout.root, "doctor", "--offline", env={"CLAUDE_BIN": str(broken)})
    assert result.exit_code == 1 and "Exec format error" in result.stdout
    # The daemon met it first: the halt it persisted fails too, with the fix spelled out.
    daemon = make_daemon(layout, clock, ProcessSpawner(), CLAUDE_BIN=missing)
    enqueue(layout, clock, "memo", 1)
    run_steps(daemon, 3)
    result = invoke(runner, layout.root, "doctor", "--offline", env={"CLAUDE_BIN": str(missing)})
    [halt_line] = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["claude-halt"]]
    assert halt_line.startswith("fail") and "npm install -g @anthropic-ai/claude-code" in halt_line
    assert not [line for line in result.stdout.splitlines() if line.split()[1:2] == ["circuits"]
                and "_claude" in line]


# -- `maestro service`: the service finds the claude found at install time -----------------------------

def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 9.9.9\n")
    path.chmod(0o755)
    return path


def _service(runner, layout: Layout, *args: str, env: dict[str, str | None]):
    result = invoke(runner, layout.root, "service", "print", "--python", "/opt/py/bin/python", *args, env=env)
    assert result.exit_code == 0, result.output
    return result


def test_service_units_carry_the_claude_found_at_install_time_and_its_folder_on_path(
        layout: Layout, tmp_path: Path, runner) -> None:
    import plistlib

    write_agent(layout, "[memo]\nschedule = '0 8 * * *'\n", {"memo": "write"})
    # The native installer's place, not on the PATH a service starts with: found all the same.
    claude = _executable(tmp_path / "home" / ".local" / "bin" / "claude")
    env = {"CLAUDE_BIN": None, "PATH": str(tmp_path / "empty")}
    unit = _service(runner, layout, "--systemd", "--user", env=env).stdout
    daemon_unit = unit.split("# ==> ")[1]
    assert f"Environment=CLAUDE_BIN={claude}\n" in daemon_unit
    assert f"Environment=PATH={claude.parent}:/usr/local/sbin:/usr/local/bin:" in daemon_unit
    assert "CLAUDE_BIN" not in unit.split("# ==> ", 2)[2]  # the enqueue triggers run no claude
    plists = _service(runner, layout, "--launchd", env=env).stdout.split("# ==> ")[1:]
    daemon_env = plistlib.loads(plists[0].split("\n", 1)[1].encode())["EnvironmentVariables"]
    assert daemon_env["CLAUDE_BIN"] == str(claude)
    assert daemon_env["PATH"].split(":")[0] == str(claude.parent) and "/opt/homebrew/bin" in daemon_env["PATH"]
    # An explicit --claude wins; a CLAUDE_BIN in .env stays in charge (the unit's would silently override it).
    other = _executable(tmp_path / "npm-global" / "bin" / "claude")
    assert f"Environment=CLAUDE_BIN={other}\n" in _service(runner, layout, "--systemd", "--user", "--claude",
                                                           str(other), env=env).stdout
    (layout.root / ".env").write_text(f"CLAUDE_BIN={other}\n")
    unit = _service(runner, layout, "--systemd", "--user", env=env).stdout
    assert "CLAUDE_BIN" not in unit and f"Environment=PATH={other.parent}:" in unit


def test_service_install_without_any_claude_warns_and_writes_no_claude_bin(layout: Layout, tmp_path: Path,
                                                                         runner) -> None:
    write_agent(layout, prompts={"memo": "write"})
    result = _service(runner, layout, "--systemd", "--user", env={"CLAUDE_BIN": None, "PATH": str(tmp_path)})
    assert "claude not found" in result.stderr and "--claude" in result.stderr
    assert "CLAUDE_BIN" not in result.stdout and "Environment=PATH" not in result.stdout
