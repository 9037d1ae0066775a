"""Hostile configuration and files: one-line errors at validation, a bad edit while running is kept out,
and one tick's trouble never takes the loop down (hardening items 5 and 10)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from maestro_py.config import Settings
from maestro_py.errors import ConfigError
from maestro_py.paths import Folder, Layout
from maestro_py.registry import Registry, RegistryError
from tests.fakes import (
    FakeClock, FakeSpawner, enqueue, events, invoke, make_daemon, one_line_error, read_json, run_steps, settings_env,
    write_agent,
)

NOT_UTF8_ENV = b"A=1\n# caf\xe9\n"


def dlq_reason(layout: Layout, tick_id: str) -> str:
    return read_json(layout.folder(Folder.DLQ) / f"{tick_id}.json")["dlq_reason"]


# -- item 5a: a .env that is not UTF-8 -------------------------------------------------------------------

def test_every_command_says_what_is_wrong_with_the_env_file_in_one_line(tmp_path: Path, runner: Any) -> None:
    root = tmp_path / "agent"
    write_agent(root, prompts={"c": "hi"})
    (root / ".env").write_bytes(NOT_UTF8_ENV)
    for args in (["status"], ["enqueue", "c"], ["budget"], ["circuit", "list"]):
        result = invoke(runner, root, *args)
        assert result.exit_code != 0, args
        assert "not UTF-8" in one_line_error(result) and ".env" in one_line_error(result), args


def test_an_env_file_broken_while_the_daemon_runs_is_logged_and_the_previous_kept(layout: Layout, clock: Any) -> None:
    write_agent(layout, prompts={"memo": "hi"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    run_steps(daemon, 2)
    before = dict(daemon.housekeeping.env)
    layout.env_file.write_bytes(NOT_UTF8_ENV)
    run_steps(daemon, 2)  # used to raise UnicodeDecodeError out of step()
    assert daemon.housekeeping.env == before
    invalid = [e for e in events(layout) if e["stage"] == "env_invalid"]
    assert len(invalid) == 1 and "not UTF-8" in invalid[0]["error"]


# -- item 5b and 10: the prompt file, read at spawn time ------------------------------------------------

def test_a_prompt_that_is_not_utf8_fails_its_tick_with_the_reason_not_the_daemon(layout: Layout, clock: Any) -> None:
    write_agent(layout, "[memo]\nmax_attempts = 2\n", {"memo": "hi"})
    layout.prompt_file("memo").write_bytes(b"caf\xe9\n")
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    (tick,) = enqueue(layout, clock, "memo")
    for _ in range(4):
        run_steps(daemon, 5)  # used to raise UnicodeDecodeError: a crash per start, then "owner died 3 times"
        clock.advance(3600)
    assert spawner.count == 0
    assert "not UTF-8" in dlq_reason(layout, tick)


def test_a_prompt_swapped_for_a_link_out_of_the_root_is_never_read(layout: Layout, clock: Any, tmp_path: Path) -> None:
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:the secret\n")
    write_agent(layout, "[memo]\nmax_attempts = 1\n", {"memo": "hi"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    run_steps(daemon, 1)  # the registry is loaded with the honest prompt
    swap = layout.cadences_dir / "memo.md.new"
    os.symlink(secret, swap)
    os.replace(swap, layout.prompt_file("memo"))
    (tick,) = enqueue(layout, clock, "memo")
    run_steps(daemon, 5)
    assert spawner.count == 0  # nothing was started with /etc/passwd on its stdin
    assert "outside the agent root" in dlq_reason(layout, tick)


# -- item 5c: numbers that pass validation and overflow later -------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("MAESTRO_CIRCUIT_OPEN_SECONDS", "1e300"),
    ("MAESTRO_CIRCUIT_MAX_OPEN_SECONDS", "inf"),
    ("MAESTRO_SPAWN_TIMEOUT_SECONDS", "nan"),
    ("MAESTRO_BACKOFF_SECONDS", "1e12"),
    ("MAESTRO_BACKOFF_SECONDS", "0,1e400"),
    ("MAESTRO_BACKOFF_SECONDS", "exp:30:1e12"),
    ("MAESTRO_MAX_INBOX", "10000000000000"),
])
def test_huge_and_infinite_settings_are_refused_in_one_line(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(settings_env(**{name: value}))


@pytest.mark.parametrize("line", ["backoff_seconds = [1e12]", "timeout_seconds = 1e300", "max_attempts = 10000000000000"])
def test_huge_registry_numbers_are_refused_naming_the_key(layout: Layout, line: str) -> None:
    write_agent(layout, f"[memo]\n{line}\n", {"memo": "hi"})
    with pytest.raises(RegistryError, match=line.split()[0]):
        Registry.load(layout)


def test_circuit_open_for_an_absurd_time_is_refused(tmp_path: Path, runner: Any) -> None:
    root = tmp_path / "agent"
    write_agent(root, prompts={"c": "hi"})
    result = invoke(runner, root, "circuit", "open", "c", "--for", "1e12")
    assert result.exit_code == 2 and one_line_error(result)


# -- item 5d: the loop survives any exception from one tick's work ---------------------------------------

class ExplodingSpawner(FakeSpawner):
    """A spawner with a bug: the first start raises something nobody planned for."""

    def spawn(self, spec: Any) -> Any:
        if not getattr(self, "exploded", False):
            self.exploded = True
            raise RuntimeError("boom")
        return super().spawn(spec)


def test_an_unexpected_error_starting_one_tick_fails_that_tick_and_the_loop_goes_on(layout: Layout,
                                                                                    clock: Any) -> None:
    write_agent(layout, "[memo]\nmax_attempts = 3\n", {"memo": "[[fake:ok]]"})
    spawner = ExplodingSpawner()
    daemon = make_daemon(layout, clock, spawner)
    (tick,) = enqueue(layout, clock, "memo")
    for _ in range(3):
        run_steps(daemon, 5)  # used to end the daemon with a traceback, the tick left in claimed/
        clock.advance(3600)
    assert read_json(layout.folder(Folder.DONE) / f"{tick}.json")["history"][-2]["reason"].endswith("boom")
    assert [e["stage"] for e in events(layout)].count("internal_error") == 1


def test_an_unexpected_error_while_settling_requeues_the_tick_and_charges_its_reservation(layout: Layout, clock: Any,
                                                                                         monkeypatch: Any) -> None:
    write_agent(layout, "[memo]\nreserve_tokens = 7000\n", {"memo": "[[fake:ok]]"})
    daemon = make_daemon(layout, clock, FakeSpawner())
    (tick,) = enqueue(layout, clock, "memo")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("judging failed")

    monkeypatch.setattr(daemon.guardrails, "learn", broken)
    run_steps(daemon, 2)  # spawn, then a settle that fails: used to end the daemon, the reservation held for ever
    (requeued,) = [e for e in events(layout) if e["stage"] == "requeued"]
    assert requeued["id"] == tick and "internal error while settling" in requeued["reason"]
    first = json.loads(layout.ledger_file.read_text().splitlines()[0])
    assert first["total_tokens"] is None and first["charged_tokens"] == 7000  # unknown, charged, not free
    monkeypatch.undo()
    run_steps(daemon, 5)  # the loop goes on: the tick runs again and settles
    done = read_json(layout.folder(Folder.DONE) / f"{tick}.json")
    assert done["attempts"] == 1 and daemon.budget.reservations == {}  # the requeue was not counted


def test_a_typo_in_env_or_cadences_toml_does_not_drop_a_timer_fired_tick(tmp_path: Path) -> None:
    """`echo 'MAESTRO_DAILY_USD_BUDGET=5$' >> .env`: `maestro enqueue` (what the timers run) still delivers; only a
    bad value of what it uses (MAESTRO_MAX_INBOX) stops it. A broken cadences.toml is said on stderr, and delivered."""
    from tests.fakes import daemon_env, maestro

    layout = write_agent(tmp_path / "agent", prompts={"hello": "Say hello."})
    env = daemon_env(tmp_path)
    with open(layout.env_file, "a") as f:
        f.write("MAESTRO_DAILY_USD_BUDGET=5$\n")
    done = maestro(layout, "enqueue", "hello", "--source", "systemd", env=env)
    assert done.returncode == 0, done.stderr
    assert maestro(layout, "status", env=env).returncode == 78  # the typo is still a configuration error there
    layout.registry_file.write_text("[hello\nmode = ")
    broken = maestro(layout, "enqueue", "hello", env=env)
    assert broken.returncode == 0 and "delivered anyway" in broken.stderr
    assert len(os.listdir(layout.folder(Folder.INBOX))) == 2
    layout.env_file.write_text("MAESTRO_MAX_INBOX=lots\n")
    assert maestro(layout, "enqueue", "hello", env=env).returncode == 78  # what it uses must be valid


def test_a_refused_edit_alerts_once_and_again_when_fixed(layout: Layout, clock: FakeClock) -> None:
    from maestro_py.daemon.incidents import RULES

    write_agent(layout, prompts={"memo": "Write the memo."})
    daemon = make_daemon(layout, clock, FakeSpawner())
    for text, registry in (("MAESTRO_DAILY_USD_BUDGET=5$\n", None), ("", "[memo\n"), ("", "")):
        if registry is not None:
            layout.registry_file.write_text(registry)
        layout.env_file.write_text(text)
        clock.advance(10)
        run_steps(daemon, 3)
    stages = [e["stage"] for e in events(layout) if e["stage"] in RULES]
    assert stages.count("env_invalid") == 1 and stages.count("env_fixed") == 1, stages
    assert stages.count("registry_invalid") == 1 and stages.count("registry_fixed") == 1, stages
    alert = RULES["env_invalid"](next(e for e in events(layout) if e["stage"] == "env_invalid"))
    assert "MAESTRO_DAILY_USD_BUDGET" in alert.body and alert.level == "failure"


@pytest.mark.parametrize("name, value", [
    ("MAESTRO_NOTIFY_COMMAND", "page-me --token hunter2-x 'unclosed"),
    ("MAESTRO_SERVE_TOKEN", "hunter2 x"),
    ("MAESTRO_WEBHOOK_SECRET", "hunter2"),
])
def test_a_rejected_secret_is_not_quoted_back(name: str, value: str) -> None:
    """The redactor knows only the values that loaded: a refused edit's error (and its event and alert) must not
    carry the new secret."""
    from maestro_py.config import setting

    with pytest.raises(ConfigError) as caught:
        setting({name: value}, name)
    assert str(caught.value).startswith(f"{name}='\u2026': ") and "hunter2" not in str(caught.value)
