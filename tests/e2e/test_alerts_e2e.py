"""Alerts end to end: the real claude CLI against the loopback API trips the guards, and apprise posts the alerts
to a loopback receiver standing in for Slack (`json://127.0.0.1:PORT/…`)."""

from __future__ import annotations

import signal

import fake_api as api_module
import pytest
from fake_api import FAKE_KEY, FakeMessagesAPI
from support import MakeAgent

from tests.fakes import FakeReceiver, events, wait_for


def test_a_tripped_breaker_sends_one_opened_and_one_closed_alert(make_agent: MakeAgent, fake_api: FakeMessagesAPI,
                                                                  receiver: FakeReceiver) -> None:
    agent = make_agent({"flaky": "Say hi please."}, "[flaky]\nmax_attempts = 5\n",
                       MAESTRO_CIRCUIT_THRESHOLD="2", MAESTRO_CIRCUIT_OPEN_SECONDS="2",
                       MAESTRO_NOTIFY_URLS=receiver.url())
    fake_api.script(["500", "500"])  # two failed runs open the circuit; the probe after it gets an answer
    proc = agent.start()
    agent.enqueue("flaky")
    wait_for(lambda: receiver.titled("circuit closed"), timeout=30, what="the circuit closed alert",
             explain=lambda: f"{receiver.alerts} {[e['stage'] for e in events(agent.layout)]}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    opened = [e for e in events(agent.layout) if e["stage"] == "circuit_opened"]
    assert len(opened) == 1 and fake_api.post_count() == 3
    (alert,) = receiver.titled("circuit opened")
    assert alert["title"].endswith("circuit opened: flaky") and alert["type"] == "failure"
    assert opened[0]["open_until"] in alert["message"] and "cadence: flaky" in alert["message"]
    assert "Internal server error (fake)" in alert["message"]  # the reason
    (closed,) = receiver.titled("circuit closed")
    assert "flaky" in closed["title"] and closed["type"] == "success"
    assert [a["title"].split(": ", 1)[1] for a in receiver.alerts] == ["circuit opened: flaky",
                                                                     "circuit closed: flaky"]


def test_an_auth_halt_sends_one_alert_without_the_key(make_agent: MakeAgent, fake_api: FakeMessagesAPI,
                                                     receiver: FakeReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API's 401 quotes the key back (the CLI shows its own words instead, but its output carries it).
    monkeypatch.setitem(api_module.ERRORS, "401", (401, "authentication_error", f"invalid x-api-key {FAKE_KEY}"))
    fake_api.mode = "401"
    agent = make_agent({"memo": "Write the memo.", "brief": "Write the brief."}, "",
                       MAESTRO_NOTIFY_URLS=receiver.url())
    agent.enqueue("memo")
    agent.enqueue("brief")
    agent.run_once()

    assert fake_api.post_count() == 1  # the halt held the second tick
    (alert,) = receiver.wait(1)
    assert alert["title"].endswith("auth halt: no sub-session spawns") and alert["type"] == "failure"
    assert "reason: claude reported an error (HTTP 401)" in alert["message"] and "fix: " in alert["message"]
    assert FAKE_KEY.encode() not in receiver.raw() and b"FAKEKEY" not in receiver.raw()
    agent.assert_no_key_under_root()
