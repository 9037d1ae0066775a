"""Guardrails alone, on a fake clock: the order of the gates, the verdicts, and the explicit half-open step."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from datetime import timedelta
from typing import Any

import pytest

from maestro_py.bus.events import EventLog
from maestro_py.bus.tick import Tick
from maestro_py.paths import Folder, Layout
from maestro_py.policy.backoff import Backoff, parse_backoff
from maestro_py.policy.breaker import Breakers, CircuitFile, PersistedCircuits
from maestro_py.policy.budget import Budget, Limit
from maestro_py.policy.failures import FailureClass
from maestro_py.policy.holds import FLEET_REFUSALS
from maestro_py.policy.guardrails import Action, Guardrails, Refusal
from maestro_py.session.runner import RunOutcome
from tests.fakes import FakeLive as Live
from tests.fakes import cadence_of as cadence
from tests.fakes import cli_result


def outcome(kind: str) -> RunOutcome:
    code, result = cli_result(kind)
    return RunOutcome(pid=1, exit_code=code, signal=None, timed_out=False, stopped=False, duration_ms=5,
                      result=result, tail="tail")


def tick(attempts: int = 0, name: str = "memo") -> Tick:
    return Tick(id="20261123T120000000000Z-0000001-0000aaaa", cadence=name, source="test",
                enqueued_at="2026-11-23T12:00:00+00:00", attempts=attempts)


@pytest.fixture
def live() -> Live:
    return Live()


@pytest.fixture
def rails(layout: Layout, clock: Any, live: Live) -> Guardrails:
    events = EventLog(layout, clock=clock)
    circuits = PersistedCircuits(Breakers(threshold=2, open_seconds=100, max_open_seconds=1000),
                                 CircuitFile(layout.circuit_file, layout.folder(Folder.TMP)), events, clock)
    tuning = SimpleNamespace(max_live=2, max_attempts=3, quota_min_hold=60.0, quota_pause_at=None, backoff="0,30,120")
    return Guardrails(circuits=circuits, backoff=Backoff(parse_backoff("0,30,120")),
                      budget=Budget({"daily": Limit(tokens=50_000)}), live=live, settings=lambda: tuning,
                      credential="key-a", events=events, clock=clock)


def test_every_gate_open_means_no_refusal(rails: Guardrails, clock: Any) -> None:
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is None


def test_refusals_come_in_the_readme_order(rails: Guardrails, clock: Any, live: Live) -> None:
    """Make every gate refuse, then lift them one by one: each answer is the next gate in `Refusal`'s order."""
    from maestro_py.permissions import Permissions
    from maestro_py.session.sandbox import Sandbox

    memo = cadence(permissions=Permissions(tools=("Read", "Bash"), sandbox="required"))
    now = clock.now()
    for _ in range(3):
        rails.denials.learn("memo", "", ("Bash",))                                   # misconfigured
    rails.sandbox = lambda: Sandbox("bwrap not on the run's PATH")                   # sandbox missing
    rails.budget.reserve("other", "x", rails.budget.estimate("x", 50_000, None))  # budget: nothing left
    live.cadences = ["memo"]                                                         # overlap, and unproven creds
    rails.backoff.record_failure("memo", now)
    rails.backoff.record_failure("memo", now)                                        # backoff: 30 s
    rails.breakers.open_manually("memo", now, 60)                                    # circuit open
    rails.breakers.hold_quota(now, now + timedelta(hours=1), "five_hour: limit")   # quota hold
    rails.breakers.halt_claude(now, "claude not found", "")                          # claude missing
    rails.breakers.halt_auth(now, "401", "key-a")                                    # auth halt
    rails.set_emergency("operator")                                                  # emergency stop
    seen = []

    def refusal(spawned: bool = True) -> Refusal | None:
        answer = rails.refusal(memo, now, spawned_this_step=spawned)
        seen.append(answer)
        return answer

    refusal()
    rails.set_emergency(None)
    refusal()
    rails.breakers.reset("_auth")
    refusal()
    rails.breakers.reset("_claude")
    refusal()
    rails.breakers.reset("_quota")
    refusal()
    rails.sandbox = lambda: Sandbox(None)
    refusal()
    rails.denials.learn("memo", "", ())
    refusal()
    rails.breakers.reset("memo")
    refusal()
    rails.backoff.record_success("memo")
    refusal()                      # pacing: something spawned this step
    rails.settings().max_live = 1  # the settings in force change (a reload hands out new ones)
    refusal(spawned=False)         # live cap: 1 running, cap 1
    rails.settings().max_live = 2
    refusal(spawned=False)         # auth probe: 1 running, credentials unproven
    rails.credentials_verified = True
    refusal(spawned=False)         # overlap: memo itself is running
    live.cadences = ["other"]
    refusal(spawned=False)         # budget
    rails.budget.release("other")
    refusal(spawned=False)
    assert seen == [*LOCAL, None]  # the fleet gates come last: tests/test_fleet.py


LOCAL = [r for r in Refusal if r not in FLEET_REFUSALS.values()]


def test_an_emergency_stop_wins_over_a_waiting_overlap(rails: Guardrails, clock: Any, live: Live) -> None:
    """The order bug: the daemon used to ask the overlap gate first, so this counted as an overlap wait."""
    live.cadences = ["memo"]
    rails.credentials_verified = True
    rails.set_emergency("spend spike")
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is Refusal.EMERGENCY_STOP
    rails.set_emergency(None)
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is Refusal.OVERLAP_WAIT


def test_a_budget_refusal_is_reported_once_per_scope_and_window(rails: Guardrails, clock: Any, layout: Layout) -> None:
    big = cadence(reserve_tokens=60_000)
    for _ in range(3):
        assert rails.refusal(big, clock.now(), spawned_this_step=False) is Refusal.BUDGET
    events = (layout.events_dir / f"bus-{clock.now().astimezone():%Y-%m-%d}.jsonl").read_text()
    assert events.count('"budget_exhausted"') == 1


def test_a_budget_smaller_than_one_reservation_is_reported_as_never_fitting(rails: Guardrails, clock: Any,
                                                                           layout: Layout) -> None:
    """The limit (50,000) is less than memo's own reservation (60,000): no reset helps, and the event says so."""
    now = clock.now()
    assert rails.refusal(cadence(reserve_tokens=60_000), now, spawned_this_step=False) is Refusal.BUDGET
    rails.budget.reserve("other", "x", rails.budget.estimate("x", 45_000, None))
    assert rails.refusal(cadence(reserve_tokens=10_000), now, spawned_this_step=False) is Refusal.BUDGET
    never, spent = [e for e in map(json.loads, (layout.events_dir / f"bus-{now.astimezone():%Y-%m-%d}.jsonl")
                                   .read_text().splitlines()) if e["stage"] == "budget_exhausted"]
    assert never["level"] == "error" and never["never_fits"] is True and never["cadence"] == "memo"
    assert (never["estimate_tokens"], never["limit_tokens"], never["scope"], never["window"]) == \
        (60_000, 50_000, "global", "daily")
    assert never["reason"] == ("memo will never run: one run reserves 60,000 tokens (reserve_tokens), more than the "
                               "whole limit of 50,000 tokens; raise the limit or lower the reservation")
    # Only spent for now (10,000 fits the limit, not the 5,000 left): a warning that ends at the reset.
    assert spent["level"] == "warn" and spent["never_fits"] is False and spent["estimate_tokens"] == 10_000
    assert spent["resets_at"] and "until" in spent["reason"]


def test_success_completes_and_proves_the_credentials(rails: Guardrails) -> None:
    rails.backoff.record_failure("memo", rails.clock.now())
    verdict = rails.learn(tick(), cadence(), outcome("ok"))
    assert verdict.action is Action.COMPLETE and rails.credentials_verified
    assert rails.backoff.holds("memo", rails.clock.now()) is None


def test_a_transient_failure_retries_after_the_backoff(rails: Guardrails, clock: Any) -> None:
    first = rails.learn(tick(), cadence(), outcome("500"))
    assert first.action is Action.RETRY and first.failure_class is FailureClass.TRANSIENT
    assert first.retry_at == clock.now()  # 0 s after the first failure
    second = rails.learn(tick(1), cadence(), outcome("500"))
    # The second failure opens the breaker (threshold 2): the retry waits for its open period.
    assert second.retry_at == clock.now() + timedelta(seconds=100)
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is Refusal.CIRCUIT_OPEN


def test_the_last_attempt_dead_letters_and_a_permanent_failure_at_once(rails: Guardrails) -> None:
    last = rails.learn(tick(attempts=2), cadence(), outcome("500"))
    assert last.action is Action.DEAD_LETTER and not last.permanent
    permanent = rails.learn(tick(), cadence("other"), outcome("400"))
    assert permanent.action is Action.DEAD_LETTER and permanent.permanent
    assert permanent.failure_class is FailureClass.PERMANENT


def test_an_auth_failure_requeues_and_halts_until_the_credentials_change(rails: Guardrails, clock: Any) -> None:
    verdict = rails.learn(tick(), cadence(), outcome("401"))
    assert verdict.action is Action.REQUEUE and not verdict.burns_attempt
    assert verdict.outcome == "failed_auth"
    assert rails.refusal(cadence("other"), clock.now(), spawned_this_step=False) is Refusal.AUTH_HALT
    rails.use_credentials("key-a", "same key")
    assert rails.refusal(cadence("other"), clock.now(), spawned_this_step=False) is Refusal.AUTH_HALT
    rails.use_credentials("key-b", "new key")
    assert rails.refusal(cadence("other"), clock.now(), spawned_this_step=False) is None


def test_a_run_the_daemon_ended_is_requeued_even_after_a_printed_success(rails: Guardrails) -> None:
    verdict = rails.learn(tick(), cadence(), outcome("ok"), ended_by="daemon stopping")
    assert verdict == dataclasses.replace(verdict, action=Action.REQUEUE, reason="daemon stopping")
    assert not rails.credentials_verified  # a cut-short run proves nothing


def test_no_result_during_disk_trouble_is_not_the_ticks_fault(rails: Guardrails) -> None:
    verdict = rails.learn(tick(), cadence(), outcome("garbage"), disk_trouble=lambda: "disk full")
    assert verdict.action is Action.REQUEUE and verdict.failure_class is FailureClass.DISK
    plain = rails.learn(tick(), cadence("other"), outcome("garbage"))
    assert plain.action is Action.RETRY and plain.failure_class is FailureClass.UNKNOWN


def test_open_to_half_open_is_an_explicit_step(rails: Guardrails, clock: Any) -> None:
    rails.breakers.open_manually("memo", clock.now(), 60)
    clock.advance(61)
    # Asking does not change anything: the circuit stays open until the loop's housekeeping advances it.
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is Refusal.CIRCUIT_OPEN
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is Refusal.CIRCUIT_OPEN
    rails.advance(clock.now())
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is None
    rails.spawned("t1", cadence())  # the one probe
    assert rails.refusal(cadence(), clock.now(), spawned_this_step=False) is Refusal.CIRCUIT_OPEN


def test_the_auth_halt_fix_fits_how_sub_sessions_authenticate(rails: Guardrails, layout: Layout, clock: Any) -> None:
    """With the subscription already preferred, telling the operator to prefer it was no help."""
    log = layout.events_dir / f"bus-{clock.now().astimezone():%Y-%m-%d}.jsonl"
    rails.learn(tick(), cadence(), outcome("401"))
    assert "MAESTRO_PREFER_SUBSCRIPTION_AUTH=1" in log.read_text().splitlines()[-1]
    rails.use_credentials("oauth", "now on the subscription", subscription=True)
    rails.learn(tick(), cadence(), outcome("401"))
    last = log.read_text().splitlines()[-1]
    assert "log in again" in last and "MAESTRO_PREFER_SUBSCRIPTION_AUTH=1" not in last


def test_a_rate_limited_run_is_never_retried_at_once(rails: Guardrails, clock: Any) -> None:
    """After a 429 the first retry used to come at 0 s (the schedule's first step), costing a CLI start for nothing."""
    verdict = rails.learn(tick(), cadence(), outcome("429"))
    assert verdict.action is Action.RETRY and verdict.failure_class is FailureClass.RATE
    assert verdict.retry_at == clock.now() + timedelta(seconds=60)
    assert rails.refusal(cadence(), clock.now() + timedelta(seconds=59), spawned_this_step=False) is Refusal.BACKOFF
    transient = rails.learn(tick(name="other"), cadence("other"), outcome("500"))
    assert transient.retry_at == clock.now()  # other classes keep the configured schedule


def test_a_timeout_says_the_limit_and_whether_anything_was_printed(rails: Guardrails) -> None:
    """Timeouts used to be recorded only as "timed out", with an empty tail."""
    silent = dataclasses.replace(outcome("garbage"), timed_out=True, signal=9, tail="", timeout_s=1800.0)
    verdict = rails.learn(tick(), cadence(), silent)
    assert verdict.reason == "timed out after 1800 s: it printed nothing before it was ended"
    talked = dataclasses.replace(silent, tail="retrying in 32 s")
    assert rails.learn(tick(), cadence("other"), talked).reason == "timed out after 1800 s: its last output is in `tail`"


def test_a_5xx_the_cli_was_free_to_retry_but_did_not_is_permanent(rails: Guardrails) -> None:
    """No `api_retry` line before a 5xx means the API said not to retry (x-should-retry: false)."""
    base = outcome("500")
    assert base.result is not None
    refused = dataclasses.replace(base, result=dataclasses.replace(base.result, api_retries=0))
    verdict = rails.learn(tick(), cadence(), refused, cli_retries=True)
    assert verdict.action is Action.DEAD_LETTER and verdict.permanent
    assert "the API said not to retry it" in (verdict.reason or "")
    # The CLI was told not to retry (CLAUDE_CODE_MAX_RETRIES=0), or it retried, or nobody knows: transient.
    for result, allowed in ((refused.result, False), (dataclasses.replace(base.result, api_retries=2), True),
                            (base.result, True)):
        again = rails.learn(tick(name="other"), cadence("other"), dataclasses.replace(base, result=result),
                             cli_retries=allowed)
        assert again.failure_class is FailureClass.TRANSIENT
