"""The budget governor: reserve before spawn, settle from the ledger, halt at the limit, fail closed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import TZPATH, ZoneInfo

import pytest
from click.testing import CliRunner

from maestro_py.cli import cli
from maestro_py.clock import iso
from maestro_py.paths import Folder, Layout
from maestro_py.policy.budget import (
    Estimate, Budget, Limit, local_zone, never_fits_entry, never_fits_lines, over_limit, window_bounds,
)
from tests.fakes import (
    FakeClock, FakeSpawner, attempts, enqueue, events, ledger_rows, make_daemon, read_json, run_steps, tick_ids,
    write_agent,
)

RUN_TOKENS = 1234 + 56  # what the fake (and the loopback API) meter per run


def test_token_budget_lets_two_runs_settle_and_the_third_wait(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\noverlap = 'allow'\nreserve_tokens = 1500\n", {"memo": "[[fake:ok]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_DAILY_TOKEN_BUDGET=3000)
    ids = enqueue(layout, clock, "memo", 3)
    run_steps(daemon, 40)
    assert spawner.count == 2
    assert tick_ids(layout, Folder.INBOX) == [ids[2]] and attempts(layout, ids[2]) == 0
    assert daemon.counters["deferred_budget"] > 0
    exhausted = [e for e in events(layout) if e["stage"] == "budget_exhausted"]
    assert len(exhausted) == 1 and exhausted[0]["scope"] == "global"
    (daily,) = [r for r in daemon.budget.summary(clock.now()) if r["window"] == "daily"]
    assert daily["spent"]["tokens"] == 2 * RUN_TOKENS and daily["remaining"]["tokens"] == 3000 - 2 * RUN_TOKENS
    # The next window lets it run.
    _, reset = window_bounds("daily", clock.now())
    clock.advance((reset - clock.now()).total_seconds() + 1)
    run_steps(daemon, 5)
    assert spawner.count == 3


def test_a_soft_threshold_warns_once_per_scope_and_window(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\nreserve_tokens = 100\nbudget_tokens_daily = 3000\n", {"memo": "[[fake:ok]]"})
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_DAILY_TOKEN_BUDGET=10_000, MAESTRO_BUDGET_WARN_AT=0.5)
    for i in range(3):  # the cadence's own limit: 43 %, 86 %, 129 %; the global one: 13 %, 26 %, 39 %
        enqueue(layout, clock, "memo", payload={"n": i})
        run_steps(daemon, 5)
    warned = [(e["scope"], e["window"], e["used_pct"]) for e in events(layout) if e["stage"] == "budget_warning"]
    assert warned == [("cadence:memo", "daily", 86)]
    clock.advance(24 * 3600)  # a new window warns again
    for i in range(2):
        enqueue(layout, clock, "memo", payload={"n": 10 + i})
        run_steps(daemon, 5)
    assert [e["used_pct"] for e in events(layout) if e["stage"] == "budget_warning"] == [86, 86]


def test_fan_out_stops_at_the_budget_with_overshoot_within_one_reservation(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[fan]\noverlap = 'allow'\n", {"fan": "[[fake:hang]]"})
    spawner = FakeSpawner()
    limit = 5 * RUN_TOKENS
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=4,
                         MAESTRO_DAILY_TOKEN_BUDGET=limit, MAESTRO_RESERVE_TOKENS=1000)
    daemon.guardrails.credentials_verified = True
    enqueue(layout, clock, "fan", 20)
    for _ in range(40):
        run_steps(daemon, 3)
        for session in spawner.live()[:1]:
            session.finish("ok")
    run_steps(daemon, 5)
    spent = sum(r["charged_tokens"] for r in ledger_rows(layout))
    assert spawner.count < 20
    overshoot = spent - limit
    assert overshoot <= RUN_TOKENS  # at most one run's estimate error
    assert daemon.counters["deferred_budget"] > 0
    assert len(tick_ids(layout, Folder.INBOX)) == 20 - spawner.count


def test_restart_mid_window_does_not_reset_spent(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\noverlap = 'allow'\nreserve_tokens = 1000\n", {"memo": "[[fake:ok]]"})
    first = make_daemon(layout, clock, FakeSpawner(), MAESTRO_DAILY_TOKEN_BUDGET=3000)
    enqueue(layout, clock, "memo", 2)
    run_steps(first)
    spawner = FakeSpawner()
    second = make_daemon(layout, clock, spawner, MAESTRO_DAILY_TOKEN_BUDGET=3000)
    enqueue(layout, clock, "memo", 1)
    run_steps(second)
    assert spawner.count == 0  # 2 × 1290 already spent today, per the ledger
    assert second.counters["deferred_budget"] > 0


def test_unmetered_run_keeps_its_reservation_as_spent(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[blind]\noverlap = 'allow'\nreserve_tokens = 2000\nmax_attempts = 1\n",
                {"blind": "[[fake:garbage]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_DAILY_TOKEN_BUDGET=3000)
    enqueue(layout, clock, "blind", 2)
    run_steps(daemon)
    assert spawner.count == 1  # 2000 charged for the unmeasured run: 1000 left < 2000 reserved
    (row,) = ledger_rows(layout)
    assert row["input_tokens"] is None and row["cost_usd"] is None and row["metered"] is False
    assert row["charged_tokens"] == 2000


def test_budget_exempt_cadence_is_not_charged_for_unmetered_runs(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[blind]\noverlap = 'allow'\nreserve_tokens = 2000\nmax_attempts = 1\nbudget_exempt = true\n",
                {"blind": "[[fake:garbage]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_DAILY_TOKEN_BUDGET=3000)
    enqueue(layout, clock, "blind", 2)
    run_steps(daemon)
    assert spawner.count == 2
    assert all(r["charged_tokens"] == 0 and r["input_tokens"] is None for r in ledger_rows(layout))


def test_usd_budget_and_per_cadence_budget(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\noverlap = 'allow'\nbudget_usd_daily = 0.02\nreserve_usd = 0.008\n"
          "[brief]\noverlap = 'allow'\nreserve_usd = 0.008\n", {"memo": "[[fake:ok]]", "brief": "[[fake:ok]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_DAILY_USD_BUDGET=1.0)
    enqueue(layout, clock, "memo", 4)
    enqueue(layout, clock, "brief", 4)
    run_steps(daemon, 60)
    rows = ledger_rows(layout)
    memo_runs = [r for r in rows if r["cadence"] == "memo"]
    assert len(memo_runs) == 2  # 2 × $0.00757 spent; $0.0049 left < $0.008 reserved
    assert len([r for r in rows if r["cadence"] == "brief"]) == 4  # its neighbour's limit does not stop it
    scopes = {(r["scope"], r["window"]) for r in daemon.budget.summary(clock.now())}
    assert ("cadence:memo", "daily") in scopes


def test_a_budget_smaller_than_one_reservation_never_spawns_and_says_why(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\noverlap = 'allow'\n", {"memo": "[[fake:ok]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_DAILY_TOKEN_BUDGET=1000)
    enqueue(layout, clock, "memo")
    for _ in range(3):  # three days: the reset never helps
        run_steps(daemon, 5)
        clock.advance(86_400)
    assert spawner.count == 0 and daemon.counters["deferred_budget"] > 0
    exhausted = [e for e in events(layout) if e["stage"] == "budget_exhausted"]
    assert len(exhausted) == 3 and all(e["never_fits"] for e in exhausted)  # once a window, as before
    assert (exhausted[0]["estimate_tokens"], exhausted[0]["limit_tokens"]) == (20_000, 1000)
    assert "memo will never run" in exhausted[0]["reason"]


def test_never_fits_names_the_setting_that_holds_the_reservation() -> None:
    gov = Budget({"daily": Limit(tokens=1000, usd=0.1)}, default_estimate=Estimate(20_000, 0.25, "default"))
    limit = gov.global_limits["daily"]

    def line(*estimates: Estimate) -> list[str]:
        return never_fits_lines(never_fits_entry(f"c{i}", e, limit, over_limit(limit, e) or "")
                                for i, e in enumerate(estimates))

    assert over_limit(limit, Estimate(1000, 0.1, "configured")) is None  # exactly the limit fits an empty window
    assert line(gov.estimate("c", reserve_tokens=5000)) == [
        "c0 will never run: one run reserves 5,000 tokens (reserve_tokens), more than the whole limit of 1,000 "
        "tokens; raise the limit or lower the reservation"]
    assert "(MAESTRO_RESERVE_TOKENS)" in line(gov.estimate("c", reserve_usd=0.05))[0]  # its tokens: the default
    assert "reserves $0.5000 (reserve_usd), more than the whole limit of $0.1000" in \
        line(gov.estimate("c", reserve_tokens=500, reserve_usd=0.5))[0]
    assert "(recent average of 1 runs)" in line(Estimate(3000, 0.01, "recent average of 1 runs"))[0]
    assert line(gov.default_estimate, gov.default_estimate)[0].startswith("c0, c1 will never run: one run reserves")


def test_max_budget_usd_is_passed_to_the_cli(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\nmax_budget_usd = 0.5\n", {"memo": "[[fake:ok]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    enqueue(layout, clock, "memo")
    run_steps(daemon)
    argv = spawner.sessions[0].spec.argv
    assert argv[argv.index("--max-budget-usd") + 1] == "0.5"


def test_estimate_prefers_configured_then_recent_average_then_default() -> None:
    gov = Budget({"daily": Limit()}, default_estimate=Estimate(500, 0.1, "default"))
    assert gov.estimate("a").basis == "default"
    now = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    gov.load([{"ts": "2026-11-23T10:00:00Z", "cadence": "a", "total_tokens": 100, "cost_usd": 0.01, "ok": True},
              {"ts": "2026-11-23T11:00:00Z", "cadence": "a", "total_tokens": 300, "cost_usd": 0.03, "ok": True}],
             now)
    assert (gov.estimate("a").tokens, gov.estimate("a").usd) == (200, 0.02)
    assert gov.estimate("a", reserve_tokens=7).tokens == 7


def test_hourly_window_resets_on_the_hour() -> None:
    now = datetime(2026, 11, 23, 12, 30, tzinfo=timezone.utc)
    start, reset = window_bounds("hourly", now)
    assert reset - start == timedelta(hours=1) and start <= now < reset


def test_budget_command_reports_total_spent_remaining(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\noverlap = 'allow'\n", {"memo": "[[fake:ok]]"})
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_DAILY_TOKEN_BUDGET=100000)
    enqueue(layout, clock, "memo", 2)
    run_steps(daemon)
    # The ledger rows carry the fake clock's date: point the CLI's clock-free view at rows of "today".
    rows = ledger_rows(layout)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    layout.ledger_file.write_text("".join(json.dumps({**r, "ts": now}) + "\n" for r in rows))
    out = CliRunner().invoke(cli, ["--root", str(layout.root), "budget", "--json"],
                             env={"MAESTRO_DAILY_TOKEN_BUDGET": "100000"})
    assert out.exit_code == 0, out.output
    (daily,) = [r for r in json.loads(out.stdout) if r["window"] == "daily"]
    assert daily["total"]["tokens"] == 100000 and daily["spent"]["tokens"] == 2 * RUN_TOKENS
    assert daily["remaining"]["tokens"] == 100000 - 2 * RUN_TOKENS and daily["runs"] == 2
    assert daily["top_cadences"][0]["cadence"] == "memo"
    text = CliRunner().invoke(cli, ["--root", str(layout.root), "budget"]).stdout
    assert "global daily" in text and "spent" in text
    assert read_json(layout.consumer_file)["budget"]


def test_a_run_is_charged_what_it_spent_else_its_reservation_unless_exempt() -> None:
    from maestro_py.policy.budget import charge_for

    held = Estimate(1290, 0.05, "history")
    assert charge_for({"total_tokens": 300, "cost_usd": 0.01}, held, exempt=False) == (True, 300, 0.01)
    assert charge_for({"total_tokens": 0, "cost_usd": None}, held, exempt=False) == (True, 0, 0.0)  # measured zero
    assert charge_for({"total_tokens": None, "cost_usd": None}, held, exempt=False) == (False, 1290, 0.05)
    assert charge_for({"total_tokens": None, "cost_usd": None}, held, exempt=True) == (False, 0, 0.0)


# -- daylight saving time: Europe/Berlin springs forward on 2026-03-29 and falls back on 2026-10-25 ----------

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int, fold: int = 0) -> datetime:
    """The instant (in UTC, as clocks give it) of a Berlin wall time; fold=1: the repeated hour's second pass.

    (In UTC because Python never finds a Berlin time inside the repeated hour equal to an instant of another zone.)
    """
    return datetime(*args, tzinfo=BERLIN, fold=fold).astimezone(timezone.utc)


def berlin_charge(when: datetime, tokens: int = 1000) -> dict[str, object]:
    return {"ts": iso(when), "cadence": "memo", "ok": True, "total_tokens": tokens, "cost_usd": 0.01}


@pytest.fixture
def tz_berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time is Berlin (TZ), as on an operator's machine there."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("now", [berlin(2026, 3, 29, 1, 30), berlin(2026, 3, 29, 3, 0), berlin(2026, 3, 29, 10),
                                 berlin(2026, 3, 29, 23, 59)])
def test_the_spring_forward_day_is_23_hours_from_midnight_to_midnight(now: datetime) -> None:
    start, reset = window_bounds("daily", now, BERLIN)
    assert (start, reset) == (berlin(2026, 3, 29), berlin(2026, 3, 30))  # not 23:00 the day before
    assert reset - start == timedelta(hours=23) and start <= now < reset


@pytest.mark.parametrize("now", [berlin(2026, 10, 25, 1, 30), berlin(2026, 10, 25, 2, 30),
                                 berlin(2026, 10, 25, 2, 30, fold=1), berlin(2026, 10, 25, 23, 30)])
def test_the_fall_back_day_is_25_hours_from_midnight_to_midnight(now: datetime) -> None:
    start, reset = window_bounds("daily", now, BERLIN)
    assert (start, reset) == (berlin(2026, 10, 25), berlin(2026, 10, 26))  # the reset is not an hour early
    assert reset - start == timedelta(hours=25) and start <= now < reset


def test_hourly_windows_are_one_real_hour_across_the_skipped_and_the_repeated_hour() -> None:
    spring = [window_bounds("hourly", berlin(2026, 3, 29, h, 30), BERLIN) for h in (0, 1, 3, 4)]
    assert [s for s, _ in spring] == [berlin(2026, 3, 29, h) for h in (0, 1, 3, 4)]
    assert spring[1][1] == berlin(2026, 3, 29, 3)  # 01:00 CET to 03:00 CEST is one hour
    autumn_times = [berlin(2026, 10, 25, 1, 30), berlin(2026, 10, 25, 2, 30), berlin(2026, 10, 25, 2, 30, fold=1),
                    berlin(2026, 10, 25, 3, 30)]
    autumn = [window_bounds("hourly", t, BERLIN) for t in autumn_times]
    assert [s for s, _ in autumn] == [berlin(2026, 10, 25, 1), berlin(2026, 10, 25, 2),
                                      berlin(2026, 10, 25, 2, fold=1), berlin(2026, 10, 25, 3)]
    for (start, reset), now in zip(spring + autumn, [berlin(2026, 3, 29, h, 30) for h in (0, 1, 3, 4)] + autumn_times):
        assert reset - start == timedelta(hours=1) and start <= now < reset
    # Each pass through the repeated hour is its own window, reported once each.
    assert autumn[1][1] == autumn[2][0] and len({s for s, _ in autumn}) == 4


def test_charges_of_the_long_autumn_day_are_all_kept_until_its_midnight() -> None:
    gov = Budget({"daily": Limit(tokens=100_000)}, zone=BERLIN)
    gov.load([berlin_charge(berlin(2026, 10, 24, 23, 30)), berlin_charge(berlin(2026, 10, 25, 0, 30))],
             berlin(2026, 10, 25, 1))
    for when in (berlin(2026, 10, 25, 2, 30), berlin(2026, 10, 25, 2, 30, fold=1)):  # both passes of 02:30
        gov.charge(berlin_charge(when), when)
    for now in (berlin(2026, 10, 25, 10), berlin(2026, 10, 25, 23, 30)):
        assert gov.spent("global", "daily", now) == (3000, 0.03)  # the roll to CET dropped none of them
        (daily,) = [r for r in gov.summary(now) if r["window"] == "daily"]
        assert daily["resets_at"] == iso(berlin(2026, 10, 26)) and daily["runs"] == 3
    assert gov.spent("global", "daily", berlin(2026, 10, 26, 0, 30)) == (0, 0)


def test_charges_of_the_evening_before_spring_forward_are_not_counted_on_it() -> None:
    gov = Budget({"daily": Limit(tokens=100_000)}, zone=BERLIN)
    gov.load([berlin_charge(berlin(2026, 3, 28, 23, 30)), berlin_charge(berlin(2026, 3, 29, 0, 30))],
             berlin(2026, 3, 29, 10))
    assert gov.spent("global", "daily", berlin(2026, 3, 29, 10))[0] == 1000
    assert gov.summary(berlin(2026, 3, 29, 10))[0]["window_start"] == iso(berlin(2026, 3, 29))


def test_with_tz_set_the_daemon_counts_berlin_days(tz_berlin: None, layout: Layout, clock: FakeClock) -> None:
    """The bug as an operator in Berlin meets it: no zone passed anywhere, only the machine's TZ."""
    governor = make_daemon(layout, clock, FakeSpawner(), MAESTRO_DAILY_TOKEN_BUDGET=100_000).budget
    assert governor.zone == BERLIN
    (daily,) = [r for r in governor.summary(berlin(2026, 10, 25, 1, 30)) if r["window"] == "daily"]
    assert (daily["window_start"], daily["resets_at"]) == (iso(berlin(2026, 10, 25)), iso(berlin(2026, 10, 26)))
    # Without a real zone, the C library's local time (TZ) still knows the day is 25 hours long.
    assert window_bounds("daily", berlin(2026, 10, 25, 1, 30), None) == (berlin(2026, 10, 25), berlin(2026, 10, 26))


def test_the_local_zone_is_tz_else_the_etc_localtime_link_else_none(tmp_path: Path) -> None:
    berlin_file = next(Path(d, "Europe/Berlin") for d in TZPATH if Path(d, "Europe/Berlin").is_file())
    link = tmp_path / "localtime"
    link.symlink_to(berlin_file.parent.parent / "Asia" / "Tokyo")
    assert local_zone({"TZ": "Europe/Berlin"}, link) == BERLIN
    assert local_zone({"TZ": ":America/New_York"}, link) == ZoneInfo("America/New_York")
    assert local_zone({}, link) == ZoneInfo("Asia/Tokyo")
    july, january = datetime(2026, 7, 1), datetime(2026, 1, 1)
    assert local_zone({"TZ": f":{berlin_file}"}, link).utcoffset(july) == timedelta(hours=2)
    copied = tmp_path / "copied"
    copied.write_bytes(berlin_file.read_bytes())  # a copied file, not a link: no name, but the rules
    assert local_zone({}, copied).utcoffset(january) == timedelta(hours=1)
    # A POSIX rule in TZ is what the C library follows: no zone, the C library's local time decides.
    assert local_zone({"TZ": "CET-1CEST,M3.5.0,M10.5.0/3"}, link) is None
    assert local_zone({"TZ": "Mars/Olympus_Mons"}, link) is None
    assert local_zone({}, tmp_path / "missing") is None
