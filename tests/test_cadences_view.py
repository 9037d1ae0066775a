"""`maestro cadences`: mode, schedule and next fire, last outcome and cost, today's spend, what holds each one."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from maestro_py.clock import parse_iso
from maestro_py import cron
from maestro_py.paths import Layout
from tests.fakes import FakeClock, FakeSpawner, enqueue, invoke, make_daemon, run_steps, write_agent

REGISTRY = """
[memo]
schedule = "0 8 * * 1"

[flaky]
max_attempts = 3

[beat]
mode = "inline"
handler = "noop"
schedule = "*/5 * * * *"

[odd]
schedule = "@daily"
timezone = "Asia/Tokyo"
"""


@pytest.fixture
def now_clock() -> FakeClock:
    return FakeClock(datetime.now(timezone.utc).replace(microsecond=0))


def test_next_fire_is_the_first_matching_minute_in_local_time() -> None:
    after = datetime(2026, 12, 1, 10, 30).astimezone()
    assert cron.next_fire("0 8 * * 1", after) == datetime(2026, 12, 7, 8, 0).astimezone()
    assert cron.next_fire("*/15 * * * *", after) == datetime(2026, 12, 1, 10, 45).astimezone()
    assert cron.next_fire("30 10 1 12 *", after) == datetime(2027, 12, 1, 10, 30).astimezone()  # not this minute
    assert cron.next_fire("0 0 29 2 *", after) == datetime(2028, 2, 29).astimezone()
    assert cron.next_fire("0 0 29 2 1", after) == datetime(2027, 2, 1).astimezone()  # cron's OR day rule
    paris = ZoneInfo("Europe/Paris")
    assert cron.next_fire("@daily", datetime(2026, 12, 1, 23, 30, tzinfo=timezone.utc), paris) == datetime(
        2026, 12, 3, 0, 0, tzinfo=paris)  # 00:30 on the 2nd in Paris: the next midnight there is the 3rd's


def test_cadences_shows_each_cadence_at_a_glance(runner: CliRunner, layout: Layout, now_clock: FakeClock) -> None:
    write_agent(layout, REGISTRY, prompts={"memo": "write", "flaky": "[[fake:500]]", "odd": "x"})
    daemon = make_daemon(layout, now_clock, FakeSpawner(), MAESTRO_CIRCUIT_THRESHOLD=1)
    enqueue(layout, now_clock, "memo")
    enqueue(layout, now_clock, "beat")
    enqueue(layout, now_clock, "flaky")
    run_steps(daemon, 10)
    env = {"CLAUDE_BIN": "/bin/true"}  # as the daemon's: the view looks for claude as a spawn would
    doc = json.loads(invoke(runner, layout.root, "cadences", "--json", env=env).stdout)
    by = {entry["cadence"]: entry for entry in doc["cadences"]}
    assert sorted(by) == ["beat", "flaky", "memo", "odd"]
    memo = by["memo"]
    fire = parse_iso(memo["next_fire"]).astimezone()
    assert (fire.weekday(), fire.hour, fire.minute) == (0, 8, 0) and timedelta(0) < fire - now_clock.now() <= timedelta(days=7)
    assert memo["mode"] == "escalate" and memo["last"]["outcome"] == "ok"
    assert memo["last_cost"]["cost_usd"] == 0.00757 and memo["last_cost"]["tokens"] == 1290
    assert memo["today"] == {"runs": 1, "cost_usd": 0.00757, "cost_unknown_runs": 0}
    flaky = by["flaky"]
    assert flaky["circuit"]["state"] == "open" and flaky["queued"] == 1
    assert flaky["retry_wait_until"] == flaky["circuit"]["open_until"]  # its tick waits for the breaker
    assert flaky["held_by"]["gate"] == "circuit_open" and by["memo"]["held_by"] is None  # the daemon's own gates
    assert flaky["last"] is None and flaky["last_cost"]["ok"] is False  # it has not settled, but it has run
    assert by["beat"]["mode"] == "inline" and by["beat"]["last"]["outcome"] == "ok" and by["beat"]["last_cost"] is None
    tokyo = parse_iso(by["odd"]["next_fire"]).astimezone(ZoneInfo("Asia/Tokyo"))  # @daily, in its own zone
    assert (tokyo.hour, tokyo.minute) == (0, 0) and by["odd"]["timezone"] == "Asia/Tokyo"
    assert timedelta(0) < parse_iso(by["odd"]["next_fire"]) - now_clock.now() <= timedelta(days=1)
    text = invoke(runner, layout.root, "cadences", env=env).stdout
    flaky_line = next(line for line in text.splitlines() if line.startswith("flaky"))
    assert "circuit open until" in flaky_line and "retry wait until" in flaky_line and "1 queued" in flaky_line
    assert "0 0 * * * (Asia/Tokyo)" in text  # the registry keeps @daily expanded
    memo_line = next(line for line in text.splitlines() if line.startswith("memo"))
    assert "$0.0076" in memo_line and "(1 runs)" in memo_line and memo_line.rstrip().endswith("ok")


def test_a_global_hold_shows_on_every_cadence_but_inline_ones(runner: CliRunner, layout: Layout) -> None:
    write_agent(layout, REGISTRY, prompts={"memo": "write", "flaky": "x", "odd": "x"})
    assert invoke(runner, layout.root, "stop", "--reason", "budget review").exit_code == 0
    doc = json.loads(invoke(runner, layout.root, "cadences", "--json").stdout)
    held = {entry["cadence"]: entry["held_by"] for entry in doc["cadences"]}
    assert held["memo"]["gate"] == "emergency_stop" and "budget review" in held["memo"]["why"]
    assert held["beat"] is None  # inline work runs through every hold
    text = invoke(runner, layout.root, "cadences").stdout
    assert text.startswith("HELD: emergency stop: budget review; `maestro resume` clears it")


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The machine's zone is Europe/Paris for the test (cron reads schedules in local time)."""
    import time

    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_next_fire_is_local_wall_clock_time_across_a_dst_change(paris: None) -> None:
    fire = cron.next_fire("0 8 * * 1", datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc))
    assert fire is not None and fire.astimezone(timezone.utc) == datetime(2026, 12, 7, 7, 0, tzinfo=timezone.utc)
    summer = cron.next_fire("0 8 * * *", datetime(2026, 3, 28, 12, 0, tzinfo=timezone.utc))  # DST starts the 29th
    assert summer is not None and summer.astimezone(timezone.utc) == datetime(2026, 3, 29, 6, 0, tzinfo=timezone.utc)
