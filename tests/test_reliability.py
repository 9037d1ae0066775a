"""The reliability layer as a state machine: a real bus and daemon loop, a fake spawner, a fake clock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from maestro_py.policy.breaker import AUTH_HALT
from maestro_py.config import Settings
from maestro_py.paths import Folder, Layout
from tests.fakes import (
    FakeClock, FakeSpawner, attempts, enqueue, events, make_daemon, read_json, run_steps, tick_ids, write_agent,
)


def test_circuit_opens_after_threshold_and_spawns_stop_climbing(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"flaky": "[[fake:500]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_CIRCUIT_THRESHOLD=3)
    ids = enqueue(layout, clock, "flaky", 5)
    for _ in range(10):
        run_steps(daemon, 5)
        clock.advance(60)  # an hour of trying would not change it: the circuit holds for 1800 s
    assert spawner.count == 3
    doc = read_json(layout.circuit_file)
    assert doc["open"]["flaky"]["state"] == "open" and doc["open"]["flaky"]["failures"] == 3
    assert "500" in doc["open"]["flaky"]["last_error"]
    assert daemon.counters["skipped_circuit_open"] > 0
    # Ticks that never ran kept their full retry budget.
    untouched = [i for i in ids if i in tick_ids(layout, Folder.INBOX) and attempts(layout, i) == 0]
    assert len(untouched) >= 4 - 1
    assert any(e["stage"] == "circuit_opened" for e in events(layout))


def test_backoff_holds_ticks_without_burning_attempts(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"flaky": "[[fake:500]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_BACKOFF_SECONDS="60,300", MAESTRO_CIRCUIT_THRESHOLD=99)
    first, second = enqueue(layout, clock, "flaky", 2)
    run_steps(daemon)
    assert spawner.count == 1
    assert daemon.counters["skipped_backoff"] > 0
    assert attempts(layout, second) == 0 and attempts(layout, first) == 1
    clock.advance(59)
    run_steps(daemon)
    assert spawner.count == 1
    clock.advance(2)
    run_steps(daemon, 1)
    assert spawner.count == 2  # 60 s after the first failure, the next one may go
    clock.advance(200)
    run_steps(daemon)
    assert spawner.count == 2  # the second failure holds the cadence for 300 s


def test_half_open_lets_exactly_one_probe_through(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"flaky": "[[fake:500]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_CIRCUIT_THRESHOLD=2, MAESTRO_CIRCUIT_OPEN_SECONDS=100,
                         MAESTRO_MAX_LIVE_SUBSESSIONS=5, MAESTRO_MAX_ATTEMPTS=50)
    registry = "[flaky]\noverlap = 'allow'\n"
    (layout.root / "cadences.toml").write_text(registry)
    enqueue(layout, clock, "flaky", 6)
    run_steps(daemon)
    assert spawner.count == 2
    layout.prompt_file("flaky").write_text("[[fake:hang]]")
    clock.advance(101)
    run_steps(daemon)
    assert spawner.count == 3 and len(spawner.live()) == 1  # one probe, and only one
    spawner.live()[0].finish("500")
    run_steps(daemon)
    circuit = read_json(layout.circuit_file)["open"]["flaky"]
    assert circuit["state"] == "open" and circuit["open_seconds"] == 200  # doubled
    clock.advance(201)
    run_steps(daemon)
    assert spawner.count == 4
    spawner.live()[0].finish("ok")
    run_steps(daemon)
    assert not layout.circuit_file.exists()  # closed: the file is removed when nothing is open
    assert spawner.count > 4  # the rest flow again


def test_breaker_state_survives_a_restart(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"flaky": "[[fake:500]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_CIRCUIT_THRESHOLD=2)
    enqueue(layout, clock, "flaky", 4)
    run_steps(daemon)
    assert spawner.count == 2
    restarted = make_daemon(layout, clock, spawner, MAESTRO_CIRCUIT_THRESHOLD=2)
    run_steps(restarted)
    assert spawner.count == 2
    assert restarted.counters["skipped_circuit_open"] > 0


def test_auth_failure_halts_all_spawning_after_one_run(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[beat]\nmode = 'inline'\nhandler = 'noop'\n", {"memo": "[[fake:401]]", "brief": "write"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=4)
    memo = enqueue(layout, clock, "memo", 3)
    brief = enqueue(layout, clock, "brief", 3)
    beat = enqueue(layout, clock, "beat", 2)
    for _ in range(5):
        run_steps(daemon, 10)
        clock.advance(3600)
    assert spawner.count == 1  # one bad key costs exactly one sub-session
    assert sorted(tick_ids(layout, Folder.DONE)) == sorted(beat)  # inline work still runs
    assert attempts(layout, memo[0]) == 0  # not the tick's fault: no attempt burnt
    halt = read_json(layout.circuit_file)["open"][AUTH_HALT]
    assert halt["open_until"] is None and "Not logged in" in halt["last_error"]
    assert "sk-ant" not in layout.circuit_file.read_text()
    assert daemon.counters["skipped_auth_halt"] > 0
    # A new key in .env lifts the halt without a restart.
    (layout.root / ".env").write_text("ANTHROPIC_API_KEY=sk-ant-test-NEWKEY-abcdefghijklmnop\nCLAUDE_BIN=/bin/true\n")
    daemon.env.pop("ANTHROPIC_API_KEY")  # the daemon's environment came from .env in real life
    layout.prompt_file("memo").write_text("fixed")
    run_steps(daemon)
    assert spawner.count > 1
    assert not layout.circuit_file.exists()
    del brief


def test_auth_halt_is_lifted_by_reset_all(layout: Layout, clock: FakeClock) -> None:
    from click.testing import CliRunner

    from maestro_py.cli import cli

    write_agent(layout, prompts={"memo": "[[fake:401]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    enqueue(layout, clock, "memo", 2)
    run_steps(daemon)
    assert spawner.count == 1
    out = CliRunner().invoke(cli, ["--root", str(layout.root), "circuit", "list"])
    assert "AUTH HALT" in out.stdout
    assert CliRunner().invoke(cli, ["--root", str(layout.root), "circuit", "reset", "--all"]).exit_code == 0
    layout.prompt_file("memo").write_text("fine now")
    run_steps(daemon)
    assert spawner.count == 3  # the requeued tick and the second one


def test_permanent_failure_goes_straight_to_dlq(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"bad": "[[fake:400]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    (tick,) = enqueue(layout, clock, "bad")
    run_steps(daemon)
    assert spawner.count == 1
    dead = read_json(layout.folder(Folder.DLQ) / f"{tick}.json")
    assert dead["attempts"] == 1 and "400" in dead["dlq_reason"]
    assert dead["history"][-1]["failure_class"] == "permanent"


def test_live_cap_fails_closed_with_twenty_ticks_queued(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[fan]\noverlap = 'allow'\n", {"fan": "[[fake:hang]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=4)
    daemon.guardrails.credentials_verified = True
    ids = enqueue(layout, clock, "fan", 20)
    run_steps(daemon, 50)
    assert spawner.count == 4 and len(daemon.live) == 4
    assert daemon.counters["skipped_live_cap"] > 0
    queued = tick_ids(layout, Folder.INBOX)
    assert len(queued) == 16 and all(attempts(layout, i) == 0 for i in queued)
    spawner.live()[0].finish("ok")
    run_steps(daemon)
    assert spawner.count == 5  # one slot freed, one more spawned
    del ids


def test_a_leaked_claude_child_counts_toward_the_cap(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=1, MAESTRO_REAP_SECONDS=3600)
    daemon.step()  # the start-up sweep (which would kill an untracked child) is behind us
    leaked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "--print"])
    try:
        enqueue(layout, clock, "memo")
        run_steps(daemon)
        assert spawner.count == 0
        assert daemon.counters["skipped_live_cap"] > 0
    finally:
        leaked.kill()
        leaked.wait()
    clock.advance(2)  # the process scan is cached for a second
    run_steps(daemon)
    assert spawner.count == 1


def test_only_one_spawn_until_the_credentials_are_proven(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[fan]\noverlap = 'allow'\n", {"fan": "[[fake:hang]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=4)
    enqueue(layout, clock, "fan", 6)
    run_steps(daemon)
    assert spawner.count == 1 and daemon.counters["skipped_auth_probe"] > 0
    spawner.live()[0].finish("ok")
    run_steps(daemon)
    assert spawner.count == 5


def test_pacing_spawns_at_most_one_per_iteration(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[fan]\noverlap = 'allow'\n", {"fan": "[[fake:hang]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=10)
    daemon.guardrails.credentials_verified = True
    enqueue(layout, clock, "fan", 5)
    for expected in range(1, 6):
        daemon.step()
        assert spawner.count == expected


def test_skip_coalesces_a_burst_into_one_run(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"storm": "[[fake:hang]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    ids = enqueue(layout, clock, "storm", 20, same=True)
    run_steps(daemon)
    assert spawner.count == 1
    spawner.live()[0].finish("ok")
    run_steps(daemon)
    assert spawner.count == 1
    assert sorted(tick_ids(layout, Folder.DONE)) == sorted(ids)
    merged = [read_json(layout.folder(Folder.DONE) / f"{i}.json")["history"][-1] for i in ids[1:]]
    assert all(h["outcome"] == "skipped_overlap" and h["merged_into"] == ids[0] for h in merged)
    assert daemon.counters["skipped_overlap"] == 19


def test_ticks_with_their_own_payload_are_never_merged(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"mail": "[[fake:ok]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    enqueue(layout, clock, "mail", 3)
    run_steps(daemon, 20)
    assert spawner.count == 3
    assert daemon.counters["skipped_overlap"] == 0


def test_buffer_one_keeps_one_waiting_behind_a_running_tick(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[sync]\noverlap = 'buffer_one'\n", {"sync": "[[fake:hang]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    ids = enqueue(layout, clock, "sync", 5, same=True)
    run_steps(daemon)
    assert spawner.count == 1
    assert tick_ids(layout, Folder.INBOX) == [ids[1]]  # one buffered, three merged into it
    spawner.live()[0].finish("ok")
    run_steps(daemon)
    assert spawner.count == 2


def test_dlq_tools_list_show_replay_purge(layout: Layout, clock: FakeClock) -> None:
    from click.testing import CliRunner

    from maestro_py.cli import cli

    write_agent(layout, prompts={"bad": "[[fake:400]]"})
    daemon = make_daemon(layout, clock, FakeSpawner())
    (tick,) = enqueue(layout, clock, "bad")
    run_steps(daemon)
    root = ["--root", str(layout.root)]
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, [*root, "dlq", "list", "--json"]).stdout)
    assert [(i["id"], i["cadence"]) for i in listed] == [(tick, "bad")]
    shown = runner.invoke(cli, [*root, "dlq", "show", tick]).stdout
    assert f'"id": "{tick}"' in shown and '\n  "history": [' in shown  # the one-line file, pretty-printed
    out = runner.invoke(cli, [*root, "dlq", "replay", tick, "--reset-attempts"])
    assert out.exit_code == 0, out.output
    data = read_json(layout.folder(Folder.INBOX) / f"{tick}.json")
    assert data["attempts"] == 0 and data["history"][-1]["outcome"] == "replayed"
    assert runner.invoke(cli, [*root, "dlq", "replay", "nope"]).exit_code == 1
    run_steps(daemon)
    assert runner.invoke(cli, [*root, "dlq", "purge", "--older-than", "1", "--yes"]).stdout.startswith("purged 0")
    refused = runner.invoke(cli, [*root, "dlq", "purge"], input="")  # no terminal, no --yes: nothing goes
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr and tick_ids(layout, Folder.DLQ)
    assert runner.invoke(cli, [*root, "dlq", "purge", "-y"]).stdout.startswith("purged 1")
    assert list(layout.folder(Folder.DLQ).iterdir()) == []


def test_circuit_cli_open_and_reset(layout: Layout, clock: FakeClock) -> None:
    from click.testing import CliRunner

    from maestro_py.cli import cli

    root = ["--root", str(layout.root)]
    runner = CliRunner()
    write_agent(layout, prompts={"memo": "write"})
    assert runner.invoke(cli, [*root, "circuit", "open", "memo"]).exit_code == 0
    listed = json.loads(runner.invoke(cli, [*root, "circuit", "list", "--json"]).stdout)
    assert listed["memo"]["state"] == "open" and listed["memo"]["manual"] is True
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    enqueue(layout, clock, "memo")
    run_steps(daemon)
    assert spawner.count == 0
    assert runner.invoke(cli, [*root, "circuit", "reset", "memo"]).exit_code == 0
    run_steps(daemon)
    assert spawner.count == 1
    bad = runner.invoke(cli, [*root, "circuit", "reset"])
    assert bad.exit_code == 2 and "CADENCE or --all" in bad.stderr


@pytest.mark.parametrize("value", ["abc", "exp:0:10", "-1,2"])
def test_bad_backoff_setting_is_a_clear_error(value: str) -> None:
    from maestro_py.errors import ConfigError

    with pytest.raises(ConfigError, match="MAESTRO_BACKOFF_SECONDS"):
        Settings.from_env({"MAESTRO_BACKOFF_SECONDS": value})




def test_an_emergency_stop_is_counted_as_such_while_an_overlap_also_waits(layout: Layout, clock: FakeClock) -> None:
    """Refusals are counted in the README's order: the daemon used to ask the overlap gate first."""
    write_agent(layout, prompts={"memo": "[[fake:hang]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=2)
    daemon.guardrails.credentials_verified = True
    enqueue(layout, clock, "memo", 2)  # different payloads: the second waits behind the first
    run_steps(daemon, 3)
    assert spawner.count == 1 and daemon.counters["skipped_overlap_wait"] > 0
    waited = daemon.counters["skipped_overlap_wait"]
    layout.stop_file.write_text('{"reason": "spend spike"}')
    daemon.step()  # the run is being ended, and still counts as running during this step
    assert daemon.counters["skipped_emergency_stop"] >= 1
    assert daemon.counters["skipped_overlap_wait"] == waited


# -- an edit of the registry in progress ----------------------------------------------------------------

BEAT = '[beat]\nmode = "inline"\nhandler = "noop"\n'
OTHER = '[other]\nmode = "inline"\nhandler = "noop"\n'


def _edit_registry(layout: Layout, text: str) -> None:
    """Write cadences.toml as an editor does, each edit with an mtime of its own (a coarse clock could repeat one)."""
    import os
    import time

    before = layout.registry_file.stat().st_mtime_ns if layout.registry_file.exists() else time.time_ns()
    layout.registry_file.write_text(text)
    os.utime(layout.registry_file, ns=(before + 10**9, before + 10**9))


def _registry_events(layout: Layout) -> list[str]:
    return [e["stage"] for e in events(layout) if e["stage"].startswith("registry_")]


def test_a_registry_truncated_then_rewritten_dead_letters_no_queued_tick(layout: Layout, clock: FakeClock) -> None:
    """`: > cadences.toml`, 5 ticks, the file written again 0.4 s later: all 5 run, none is dead-lettered."""
    write_agent(layout, BEAT)
    daemon = make_daemon(layout, clock, FakeSpawner())
    daemon.step()
    _edit_registry(layout, "")  # the editor truncates...
    ids = enqueue(layout, clock, "beat", 5)
    run_steps(daemon, 5)
    clock.advance(0.4)
    _edit_registry(layout, BEAT)  # ...then writes
    run_steps(daemon)
    assert tick_ids(layout, Folder.DONE) == sorted(ids)
    assert tick_ids(layout, Folder.DLQ) == []
    assert _registry_events(layout) == ["registry_suspect", "registry_reloaded"]


def test_an_emptied_registry_never_turns_an_inline_cadence_into_a_spawn(layout: Layout, clock: FakeClock) -> None:
    """With cadences/beat.md present, an empty cadences.toml makes `beat` an implicit escalate cadence: the
    truncated file must not be what the queued ticks run with."""
    write_agent(layout, BEAT, {"beat": "Beat."})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    daemon.step()
    _edit_registry(layout, "")
    ids = enqueue(layout, clock, "beat", 3)
    run_steps(daemon, 5)
    assert spawner.count == 0 and tick_ids(layout, Folder.DONE) == sorted(ids)
    assert all(read_json(layout.folder(Folder.DONE) / f"{i}.json")["history"][-1]["mode"] == "inline" for i in ids)


def test_ticks_of_a_cadence_missing_from_a_half_written_registry_wait_for_it(layout: Layout,
                                                                             clock: FakeClock) -> None:
    write_agent(layout, OTHER + BEAT)
    daemon = make_daemon(layout, clock, FakeSpawner())
    daemon.step()
    _edit_registry(layout, OTHER)  # the first half of the new file: `beat` is not there yet
    ids = enqueue(layout, clock, "beat", 3)
    run_steps(daemon, 5)
    assert tick_ids(layout, Folder.INBOX) == sorted(ids) and tick_ids(layout, Folder.DLQ) == []
    assert [attempts(layout, i) for i in ids] == [0, 0, 0]  # not claimed: no attempt burnt
    assert daemon.counters["deferred_registry"] > 0
    clock.advance(5)
    _edit_registry(layout, OTHER + BEAT)
    run_steps(daemon)
    assert tick_ids(layout, Folder.DONE) == sorted(ids)
    assert read_json(layout.consumer_file)["counters"]["deferred_registry"] > 0


def test_a_cadence_that_really_vanished_is_dead_lettered_after_the_grace(layout: Layout, clock: FakeClock) -> None:
    from maestro_py.daemon.housekeeping import REGISTRY_GRACE

    write_agent(layout, OTHER + BEAT)
    daemon = make_daemon(layout, clock, FakeSpawner())
    daemon.step()
    _edit_registry(layout, OTHER)
    ids = enqueue(layout, clock, "beat", 2)
    run_steps(daemon, 3)
    clock.advance(REGISTRY_GRACE - 0.5)
    run_steps(daemon, 3)
    assert tick_ids(layout, Folder.INBOX) == sorted(ids)
    clock.advance(1)
    run_steps(daemon, 3)
    assert tick_ids(layout, Folder.DLQ) == sorted(ids)
    for tick_id in ids:
        dead = read_json(layout.folder(Folder.DLQ) / f"{tick_id}.json")
        assert "unknown cadence 'beat'" in dead["dlq_reason"] and dead["attempts"] == 0


def test_a_registry_that_stays_empty_is_applied_after_the_grace(layout: Layout, clock: FakeClock) -> None:
    from maestro_py.daemon.housekeeping import REGISTRY_GRACE

    write_agent(layout, BEAT)
    daemon = make_daemon(layout, clock, FakeSpawner())
    daemon.step()
    _edit_registry(layout, "")
    run_steps(daemon, 3)
    assert daemon.registry.get("beat") is not None  # suspect: the previous registry is kept
    clock.advance(REGISTRY_GRACE)
    daemon.step()
    assert daemon.registry.get("beat") is None
    (applied,) = [e for e in events(layout) if e["stage"] == "registry_reloaded"]
    assert applied["empty"] is True and applied["level"] == "warn"
    (tick,) = enqueue(layout, clock, "beat")
    run_steps(daemon, 3)
    assert tick_ids(layout, Folder.DLQ) == [tick]  # the wait was counted from the edit: it is over


def test_a_tick_whose_prompt_file_is_being_saved_waits_for_it(layout: Layout, clock: FakeClock) -> None:
    """An editor that saves cadences/memo.md by deleting and writing it: the implicit cadence is gone a moment."""
    import os

    write_agent(layout, "", {"memo": "Write the memo."})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    daemon.step()
    layout.prompt_file("memo").unlink()
    stamp = layout.cadences_dir.stat().st_mtime_ns + 10**9
    os.utime(layout.cadences_dir, ns=(stamp, stamp))
    (tick,) = enqueue(layout, clock, "memo")
    run_steps(daemon, 3)
    assert tick_ids(layout, Folder.INBOX) == [tick] and spawner.count == 0
    layout.prompt_file("memo").write_text("Write the memo.")
    run_steps(daemon, 3)
    assert spawner.count == 1 and tick_ids(layout, Folder.DONE) == [tick]
