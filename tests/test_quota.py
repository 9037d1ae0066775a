"""The subscription's usage limit: one run meets it, every spawn holds until the reset, no attempt is burnt,
then one probe goes first (issue 12, item 2). Guardrails alone, on a fake clock."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from maestro_py.bus.events import EventLog
from maestro_py.bus.tick import Tick
from maestro_py.paths import Folder, Layout
from maestro_py.policy.backoff import Backoff, parse_backoff
from maestro_py.policy.breaker import QUOTA_HOLD, Breakers, CircuitFile, PersistedCircuits
from maestro_py.policy.budget import Budget
from maestro_py.policy.failures import FailureClass
from maestro_py.policy.guardrails import Action, Guardrails, Refusal
from maestro_py.session.runner import RunOutcome
from tests.fakes import FakeLive as Live
from tests.fakes import cadence_of as cadence
from tests.fakes import cli_result, events

SENTENCE = "You've hit your session limit · resets 5:53am (UTC)"


def tick(name: str) -> Tick:
    return Tick(id=f"20261123T120000000000Z-{name}", cadence=name, source="test",
                enqueued_at="2026-11-23T12:00:00+00:00")


def run(kind: str, *, rate_limit: dict[str, Any] | None = None, text: str | None = None) -> RunOutcome:
    code, result = cli_result(kind)
    assert result is not None
    result = dataclasses.replace(result, rate_limit=rate_limit, text=text if text is not None else result.text)
    return RunOutcome(pid=1, exit_code=code, signal=None, timed_out=False, stopped=False, duration_ms=5,
                      result=result, tail="")


@pytest.fixture
def rails(layout: Layout, clock: Any) -> Guardrails:
    log = EventLog(layout, clock=clock)
    circuits = PersistedCircuits(Breakers(), CircuitFile(layout.circuit_file, layout.folder(Folder.TMP)), log, clock)
    tuning = SimpleNamespace(max_live=4, max_attempts=2, quota_min_hold=60.0, quota_pause_at=None, backoff="0")
    rails = Guardrails(circuits=circuits, backoff=Backoff(parse_backoff("0")), budget=Budget({}), live=Live(),
                       settings=lambda: tuning, credential="oauth", events=log, clock=clock, subscription=True)
    rails.credentials_verified = True
    return rails


def rejected(clock: Any, seconds: float) -> dict[str, Any]:
    return {"status": "rejected", "resetsAt": clock.now().timestamp() + seconds, "rateLimitType": "five_hour",
            "isUsingOverage": False}


def test_the_limit_holds_every_spawn_until_its_reset_without_burning_an_attempt(rails: Guardrails, clock: Any,
                                                                                layout: Layout) -> None:
    verdict = rails.learn(tick("memo"), cadence("memo"), run("429", rate_limit=rejected(clock, 3600), text=SENTENCE))
    assert verdict.action is Action.REQUEUE and not verdict.burns_attempt
    assert verdict.failure_class is FailureClass.QUOTA and verdict.outcome == "failed_quota"
    for name in ("memo", "brief"):  # every cadence: the limit is the account's
        assert rails.refusal(cadence(name), clock.now(), spawned_this_step=False) is Refusal.QUOTA_HOLD
    assert "memo" not in rails.breakers.circuits and rails.backoff.holds("memo", clock.now()) is None  # no breaker
    (hold,) = [e for e in events(layout) if e["stage"] == "quota_hold"]
    assert hold["kind"] == "five_hour" and hold["until"].startswith("2026-11-23T13:00")
    assert QUOTA_HOLD in layout.circuit_file.read_text()  # persisted beside the auth halt


@pytest.mark.parametrize("seconds, held", [(-100, 60), (5, 60), (3600, 3600), (30 * 86400, 7 * 86400)])
def test_the_reset_time_is_clamped(rails: Guardrails, clock: Any, seconds: float, held: float) -> None:
    rails.learn(tick("memo"), cadence("memo"), run("429", rate_limit=rejected(clock, seconds)))
    assert rails.breakers.circuits[QUOTA_HOLD].open_until == clock.now() + timedelta(seconds=held)


def test_without_an_event_the_sentence_of_a_failed_run_is_enough_and_an_hour_is_assumed(rails: Guardrails,
                                                                                         clock: Any) -> None:
    verdict = rails.learn(tick("memo"), cadence("memo"), run("429", text=SENTENCE))
    assert verdict.failure_class is FailureClass.QUOTA
    assert rails.breakers.circuits[QUOTA_HOLD].open_until == clock.now() + timedelta(hours=1)


def test_a_successful_run_quoting_the_sentence_is_not_a_limit(rails: Guardrails) -> None:
    verdict = rails.learn(tick("memo"), cadence("memo"), run("ok", text=f"the docs say: {SENTENCE}"))
    assert verdict.action is Action.COMPLETE and QUOTA_HOLD not in rails.breakers.circuits


def test_an_allowed_event_on_a_failed_run_is_not_a_limit(rails: Guardrails, clock: Any) -> None:
    allowed = {"status": "allowed", "rateLimitType": "five_hour"}
    verdict = rails.learn(tick("memo"), cadence("memo"), run("429", rate_limit=allowed, text=SENTENCE))
    assert verdict.failure_class is FailureClass.RATE  # the event wins over the text


def test_after_the_reset_one_probe_goes_first_then_the_hold_lifts(rails: Guardrails, clock: Any,
                                                                  layout: Layout) -> None:
    rails.learn(tick("memo"), cadence("memo"), run("429", rate_limit=rejected(clock, 600)))
    clock.advance(601)
    assert rails.refusal(cadence("memo"), clock.now(), spawned_this_step=False) is Refusal.QUOTA_HOLD  # until advanced
    rails.advance(clock.now())
    assert rails.refusal(cadence("memo"), clock.now(), spawned_this_step=False) is None
    rails.spawned("probe", cadence("memo"))
    assert rails.refusal(cadence("brief"), clock.now(), spawned_this_step=False) is Refusal.QUOTA_HOLD
    assert rails.learn(tick("memo"), cadence("memo"), run("ok")).action is Action.COMPLETE
    assert QUOTA_HOLD not in rails.breakers.circuits
    assert rails.refusal(cadence("brief"), clock.now(), spawned_this_step=False) is None
    assert [e["stage"] for e in events(layout)].count("quota_hold_lifted") == 1


def test_a_probe_that_meets_the_limit_again_holds_again(rails: Guardrails, clock: Any) -> None:
    rails.learn(tick("memo"), cadence("memo"), run("429", rate_limit=rejected(clock, 600)))
    clock.advance(601)
    rails.advance(clock.now())
    rails.spawned("probe", cadence("memo"))
    rails.learn(tick("memo"), cadence("memo"), run("429", rate_limit=rejected(clock, 1800)))
    hold = rails.breakers.circuits[QUOTA_HOLD]
    assert hold.state.value == "open" and hold.open_until == clock.now() + timedelta(seconds=1800)


def test_headroom_pauses_at_the_configured_utilization_and_not_below(rails: Guardrails, clock: Any,
                                                                      layout: Layout) -> None:
    rails.settings().quota_pause_at = 0.9
    below = {"status": "allowed_warning", "utilization": 0.85, "rateLimitType": "five_hour",
             "resetsAt": clock.now().timestamp() + 1200}
    assert rails.learn(tick("memo"), cadence("memo"), run("ok", rate_limit=below)).action is Action.COMPLETE
    assert QUOTA_HOLD not in rails.breakers.circuits
    assert rails.quota_usage["five_hour"]["utilization"] == 0.85
    above = dict(below, utilization=0.95)
    assert rails.learn(tick("memo"), cadence("memo"), run("ok", rate_limit=above)).action is Action.COMPLETE
    assert rails.refusal(cadence("brief"), clock.now(), spawned_this_step=False) is Refusal.QUOTA_HOLD
    assert rails.breakers.circuits[QUOTA_HOLD].open_until == clock.now() + timedelta(seconds=1200)
    (held,) = [e for e in events(layout) if e["stage"] == "quota_hold"]
    assert held["utilization"] == 0.95 and "MAESTRO_QUOTA_PAUSE_AT=0.9" in held["reason"]


def test_without_a_pause_setting_a_warning_only_records_the_utilization(rails: Guardrails) -> None:
    warn = {"status": "allowed_warning", "utilization": 0.99, "rateLimitType": "seven_day"}
    rails.learn(tick("memo"), cadence("memo"), run("ok", rate_limit=warn))
    assert QUOTA_HOLD not in rails.breakers.circuits and rails.quota_usage["seven_day"]["utilization"] == 0.99
