"""Human output shows times in the machine's zone, with its name or offset (reset times, "until" times, a breaker's
open-until, budget windows); `--json` keeps UTC ISO 8601. Real `maestro` processes with TZ set to a zone not UTC."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from maestro_py.ops import views, when
from maestro_py.paths import Layout
from tests.fakes import daemon_env, maestro, write_agent

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def agent(tmp_path: Path) -> tuple[Layout, dict[str, str]]:
    layout = write_agent(tmp_path / "agent", "[memo]\n", prompts={"memo": "Write the memo."},
                         files={".env": "MAESTRO_DAILY_USD_BUDGET=5\n"})
    return layout, daemon_env(tmp_path, TZ="Europe/Paris")


def paris(value: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A UTC ISO time as Paris wall-clock time with its zone name (CET in winter, CEST in summer)."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(PARIS)
    return f"{moment.strftime(fmt)} {moment.tzname()}"


def test_a_breakers_open_until_is_local_in_every_human_output_and_utc_in_json(
        agent: tuple[Layout, dict[str, str]]) -> None:
    # Steps: `maestro circuit open memo --for 3600`, then circuit list, status and doctor, with TZ=Europe/Paris.
    layout, env = agent
    opened = maestro(layout, "circuit", "open", "memo", "--for", "3600", env=env)
    assert opened.returncode == 0, opened.stderr
    until = json.loads(maestro(layout, "circuit", "list", "--json", env=env).stdout)["memo"]["open_until"]
    assert until.endswith(("Z", "+00:00"))  # JSON stays UTC
    local_until = paris(until)
    assert local_until.endswith((" CET", " CEST")) and local_until in opened.stdout
    assert f"open until {local_until}" in maestro(layout, "circuit", "list", env=env).stdout
    assert f"circuit memo: open until {local_until}" in maestro(layout, "status", env=env).stdout
    assert f"memo (open until {local_until})" in maestro(layout, "doctor", "--offline", env=env).stdout
    assert until not in maestro(layout, "circuit", "list", env=env).stdout  # no UTC ISO left for people


def test_budget_windows_reset_at_local_midnight_shown_as_such(agent: tuple[Layout, dict[str, str]]) -> None:
    layout, env = agent
    rows = json.loads(maestro(layout, "budget", "--json", env=env).stdout)
    daily = next(row for row in rows if row["window"] == "daily")
    assert daily["resets_at"].endswith(("Z", "+00:00"))
    shown = paris(daily["resets_at"], "%Y-%m-%d %H:%M")
    assert shown.split()[1] == "00:00"  # midnight in Paris, not in UTC
    assert f"(resets {shown})" in maestro(layout, "budget", env=env).stdout
    assert f"resets {shown}" in maestro(layout, "status", env=env).stdout


def test_a_usage_limit_hold_resets_at_a_local_time(agent: tuple[Layout, dict[str, str]]) -> None:
    layout, env = agent
    now = datetime.now(timezone.utc)
    breakers, file = views.load_breakers(layout)
    breakers.hold_quota(now, now + timedelta(hours=2), "five_hour: usage limit reached")
    file.save(breakers.to_doc(now))
    reset = paris(breakers.to_doc(now)["open"]["_quota"]["open_until"], "%Y-%m-%d %H:%M")
    for args in (("circuit", "list"), ("status",)):
        out = maestro(layout, *args, env=env).stdout
        assert f"usage limit (five_hour): resets {reset} (in " in out and " UTC" not in out, out


def test_the_helper_names_the_zone_or_gives_its_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    winter, summer = datetime(2026, 12, 1, 13, 0, tzinfo=timezone.utc), "2026-07-01T12:00:00Z"
    try:
        monkeypatch.setenv("TZ", "Europe/Paris")
        time.tzset()
        assert when.local(winter) == "2026-12-01 14:00:00 CET"
        assert when.local(summer, seconds=False) == "2026-07-01 14:00 CEST"
        monkeypatch.setenv("TZ", "America/Sao_Paulo")  # tzdata names it "-03": the offset is shown instead
        time.tzset()
        assert when.local(winter) == "2026-12-01 10:00:00 -03:00"
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
        assert when.local(winter, seconds=False) == "2026-12-01 13:00 UTC"
        assert when.local(None) == "-" and when.local("not a time") == "not a time"
    finally:
        monkeypatch.undo()
        time.tzset()
