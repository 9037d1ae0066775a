"""One gate chain: each gate's state put in front of the daemon and in front of `maestro dry-run`, the same answer.

For every gate a root is set up so that exactly that gate holds a run of `memo` (or none does). Then, at one
instant, `maestro dry-run memo --json` (the CLI entry point, reading what the daemon persisted) names the gate
it walks to first, and the daemon (in-process, holding the root's lock as `maestro run` does) is given a `memo`
tick: the counter it bumps, or the spawn it makes, is its answer. They must agree, for every gate.

Pacing is the one gate no view can see: it holds within one loop only ("not a wait"), so it is checked on its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from maestro_py.daemon.lock import DaemonLock
from maestro_py.daemon.loop import Daemon
from maestro_py.fleet import open_store
from maestro_py.paths import Layout
from maestro_py.policy.gates import GATES, Refusal
from tests.serve_support import Served
from tests.fakes import FakeClock, FakeSpawner, enqueue, invoke, make_daemon, settings_env, write_agent


@dataclass
class Root:
    layout: Layout
    clock: FakeClock
    spawner: FakeSpawner
    daemon: Daemon
    env: dict[str, str]


Setup = Callable[[Root], None]


def _hang(root: Root, cadence: str) -> None:
    """A live run of `cadence` (it never ends by itself)."""
    enqueue(root.layout, root.clock, cadence)
    before = root.spawner.count
    root.daemon.step()
    assert root.spawner.count == before + 1, "the live run did not start"


def _verified(root: Root) -> None:
    root.daemon.guardrails.credentials_verified = True


def _governor(root: Root, **limits: Any) -> None:
    store = open_store(root.env["MAESTRO_GOVERNOR_URL"])
    try:
        store.set_limit("agent:agent", "hourly", **limits)
    finally:
        store.close()


def _stop(root: Root) -> None:
    root.layout.stop_file.write_text('{"reason": "spend spike"}')
    root.daemon.step()  # housekeeping reads the STOP file


def _halt(kind: str) -> Setup:
    def setup(root: Root) -> None:
        g, now = root.daemon.guardrails, root.clock.now()
        if kind == "auth":
            g.breakers.halt_auth(now, "401 invalid x-api-key", g.credential)
        elif kind == "claude":
            from maestro_py.session import command

            g.breakers.halt_claude(now, "claude: not found", command.claude_identity(root.env))
        else:
            g.breakers.hold_quota(now, now + timedelta(hours=2), "five_hour: usage limit reached")
        g.circuits.save()
    return setup


def _breaker(root: Root) -> None:
    g, now = root.daemon.guardrails, root.clock.now()
    for _ in range(3):
        g.breakers.record_failure("memo", now, "API Error: 500")
    g.circuits.save()


def _backoff(root: Root) -> None:
    root.daemon.guardrails.backoff.record_failure("memo", root.clock.now(), lambda state: 600.0)


def _ledger_spent(root: Root) -> None:
    row = {"ts": root.clock.now().isoformat(), "tick": "x", "cadence": "memo", "attempt": 1, "ok": True,
           "cost_usd": 0.05, "total_tokens": 100, "metered": True, "charged_tokens": 100, "charged_usd": 0.05}
    with open(root.layout.ledger_file, "a") as f:
        f.write(json.dumps(row) + "\n")
    root.daemon.budget.charge(row, root.clock.now())


def _denied_runs(root: Root) -> None:
    """The last three runs of `memo` under its current policy were each denied a tool call."""
    from maestro_py.registry import Registry
    from maestro_py.session import command

    cadence = Registry.load(root.layout).get("memo")
    assert cadence is not None
    policy = command.policy_id(cadence, root.daemon.housekeeping.env, root.layout.root)
    rows = [{"ts": root.clock.now().isoformat(), "tick": f"t{i}", "cadence": "memo", "attempt": 1, "ok": True,
             "policy": policy, "denials": {"count": 1, "tools": ["Bash"]}} for i in range(3)]
    with open(root.layout.ledger_file, "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    root.daemon.guardrails.denials.seed(rows)


NO_BWRAP = "/nonexistent-bin"  # a PATH on which neither bwrap nor socat is found
CASES: dict[str, tuple[str, dict[str, str], list[Setup], Refusal | None]] = {
    # name: (cadences.toml, settings, setups, the gate that holds)
    "none": ("", {}, [_verified], None),
    "emergency stop": ("", {}, [_stop], Refusal.EMERGENCY_STOP),
    "auth halt": ("", {}, [_halt("auth")], Refusal.AUTH_HALT),
    "claude missing": ("", {}, [_halt("claude")], Refusal.CLAUDE_MISSING),
    "quota hold": ("", {}, [_halt("quota")], Refusal.QUOTA_HOLD),
    "sandbox missing": ('[memo]\ntools = ["Read", "Bash"]\nsandbox = "required"\n', {"PATH": NO_BWRAP}, [],
                        Refusal.SANDBOX_MISSING),
    "misconfigured": ("", {}, [_denied_runs], Refusal.MISCONFIGURED),
    "breaker open": ("", {}, [_breaker], Refusal.CIRCUIT_OPEN),
    "backoff": ("", {}, [_backoff], Refusal.BACKOFF),
    "live cap": ("", {"MAESTRO_MAX_LIVE_SUBSESSIONS": "1"}, [lambda r: _hang(r, "other"), _verified],
                 Refusal.LIVE_CAP),
    "auth probe": ("", {"MAESTRO_MAX_LIVE_SUBSESSIONS": "3"}, [lambda r: _hang(r, "other")], Refusal.AUTH_PROBE),
    "overlap": ("", {"MAESTRO_MAX_LIVE_SUBSESSIONS": "3"}, [lambda r: _hang(r, "memo"), _verified],
                Refusal.OVERLAP_WAIT),
    "budget spent": ("[memo]\nbudget_usd_daily = 0.06\nreserve_usd = 0.02\n", {}, [_verified, _ledger_spent],
                     Refusal.BUDGET),
    "budget never fits": ("[memo]\nbudget_usd_daily = 0.01\nreserve_usd = 0.02\n", {}, [_verified], Refusal.BUDGET),
    "governor unavailable": ("", {"MAESTRO_GOVERNOR_URL": "sqlite:////nonexistent-folder/for/governor.db"},
                             [_verified], Refusal.GOVERNOR_UNAVAILABLE),
    "fleet live cap": ("", {"MAESTRO_FLEET_MAX_LIVE": "1", "MAESTRO_MAX_LIVE_SUBSESSIONS": "3", "GOVERNOR": "1"},
                       [_verified, lambda r: _hang(r, "other")], Refusal.FLEET_LIVE_CAP),
    # The case: an agent limit of $0.20 an hour and a cadence that reserves $0.25.
    "fleet budget never fits": ("[memo]\nreserve_usd = 0.25\n", {"GOVERNOR": "1"},
                                [_verified, lambda r: _governor(r, usd=0.2)], Refusal.FLEET_BUDGET),
}


@pytest.fixture
def make_root(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], Root]]:
    locks: list[DaemonLock] = []

    def make(registry: str, settings: dict[str, str]) -> Root:
        layout = write_agent(tmp_path / "agent", registry, {"memo": "[[fake:hang]]", "other": "[[fake:hang]]"})
        overrides = dict(settings)
        if overrides.pop("GOVERNOR", None):
            overrides["MAESTRO_GOVERNOR_URL"] = f"sqlite:///{tmp_path}/governor.db"
        env = settings_env(**overrides)
        clock = FakeClock(datetime.now(timezone.utc))
        spawner = FakeSpawner()
        lock = DaemonLock(layout.lock_file, layout.root)
        lock.acquire()  # as `maestro run` does: the views then count this daemon alive
        locks.append(lock)
        return Root(layout, clock, spawner, make_daemon(layout, clock, spawner, **overrides), env)

    yield make
    for lock in locks:
        lock.release()


def _dry_run(root: Root) -> dict[str, Any]:
    result = invoke(CliRunner(), root.layout.root, "dry-run", "memo", "--json", env=root.env)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def _daemon_answer(root: Root) -> str | None:
    """The gate the daemon counts for a new `memo` tick (its counter), or None if it spawned it."""
    before = dict(root.daemon.counters)
    spawned = root.spawner.count
    [tick] = enqueue(root.layout, root.clock, "memo", payload={"probe": True})
    root.daemon.step()
    bumped = [name for name, value in root.daemon.counters.items() if value > before.get(name, 0)
              and name.startswith(("skipped_", "deferred_")) and name != "skipped_overlap"]
    started = [s for s in root.spawner.sessions[spawned:] if tick.encode() in s.spec.stdin]
    assert len(bumped) + len(started) == 1, (bumped, started)
    return bumped[0] if bumped else None


@pytest.mark.parametrize("case", list(CASES))
def test_the_daemon_and_dry_run_give_the_same_answer_for_every_gate(make_root: Any, case: str) -> None:
    registry, settings, setups, expected = CASES[case]
    root = make_root(registry, settings)
    for setup in setups:
        setup(root)
    root.daemon._write_status(force=True)
    doc = _dry_run(root)
    view = doc["refused_by"]["counter"] if doc["refused_by"] else None
    daemon = _daemon_answer(root)
    assert daemon == view == (expected.value if expected else None), (case, doc["refused_by"])
    if expected is not None:  # the words: why, and what lifts it
        assert doc["refused_by"]["why"] and doc["refused_by"]["lifts"]
    assert [g["gate"] for g in doc["gates"]] == [gate.name for gate in GATES]  # every gate, in the daemon's order


def test_every_gate_has_a_case() -> None:
    covered = {expected for _, _, _, expected in CASES.values()} | {Refusal.PACING}
    assert covered >= set(Refusal)


def test_pacing_holds_within_one_loop_only(make_root: Any) -> None:
    root = make_root("", {"MAESTRO_MAX_LIVE_SUBSESSIONS": "3"})
    _verified(root)
    enqueue(root.layout, root.clock, "memo")
    enqueue(root.layout, root.clock, "other")
    root.daemon.step()
    assert root.spawner.count == 1 and root.daemon.counters["skipped_pacing"] == 1
    root.daemon._write_status(force=True)
    pacing = next(g for g in _dry_run(root)["gates"] if g["gate"] == "pacing")
    assert not pacing["holds"] and "not a wait" in pacing["why"]
    root.daemon.step()
    assert root.spawner.count == 2


def test_the_governor_limit_case_reads_the_same_in_every_view(make_root: Any, tmp_path: Path) -> None:
    """The issue's case: an agent limit of $0.20 an hour, a cadence reserving $0.25: the daemon holds it for good,
    and so say dry-run (exit 1), run-now (refused up front), doctor (fail), cadences and budget (never fits)."""
    registry, settings, setups, _ = CASES["fleet budget never fits"]
    root = make_root(registry, settings)
    for setup in setups:
        setup(root)
    root.daemon._write_status(force=True)
    runner, at = CliRunner(), root.layout.root
    dry = invoke(runner, at, "dry-run", "memo", env=root.env)
    assert dry.exit_code == 1 and "refused now by fleet_budget" in dry.stdout
    run_now = invoke(runner, at, "run-now", "memo", env=root.env)
    assert run_now.exit_code != 0 and "not queued: fleet_budget" in run_now.output
    doctor = invoke(runner, at, "doctor", "--offline", env=root.env)
    assert "memo never fits" in doctor.output and doctor.exit_code != 0
    cadences = json.loads(invoke(runner, at, "cadences", "--json", env=root.env).stdout)
    memo = next(e for e in cadences["cadences"] if e["cadence"] == "memo")
    assert memo["held_by"]["gate"] == "fleet_budget" and memo["held_by"]["never_fits"]
    budget = invoke(runner, at, "budget", env=root.env)
    assert "never fits: memo" in budget.stdout
    [tick] = enqueue(root.layout, root.clock, "memo")
    inbox = invoke(runner, at, "inbox", "list", env=root.env)
    assert "held by fleet_budget" in inbox.stdout
    assert "held by fleet_budget" in invoke(runner, at, "tick", "show", tick, env=root.env).stdout
    served = Served(root.layout, tmp_path, MAESTRO_GOVERNOR_URL=root.env["MAESTRO_GOVERNOR_URL"])
    try:  # GET /v1/ticks/ID and the status page from a real server on loopback
        doc = served.request("GET", f"/v1/ticks/{tick}").json()
        page = served.request("GET", "/").text
    finally:
        served.stop()
    assert doc["state"] == "queued" and doc["held_by"]["gate"] == "fleet_budget" and doc["held_by"]["never_fits"]
    assert '<tr class="hold" data-cadence="memo"><td>memo</td><td>fleet_budget</td>' in page
