"""`maestro governor`, `maestro budget` and `maestro doctor` with a governor store; its URL's password
never shows."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.config import Settings
from maestro_py.errors import ConfigError
from maestro_py.fleet import open_store
from maestro_py.fleet.model import Lease
from maestro_py.ops.doctor import check_governor
from maestro_py.ops.probe import Level
from maestro_py.redact import Redactor
from tests.fakes import invoke, one_line_error, write_agent


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path}/governor.db"
    write_agent(tmp_path / "agent", "", {"memo": "hi"}, files={".env": f"MAESTRO_GOVERNOR_URL={url}\n"})
    return tmp_path / "agent"


def test_limits_are_set_shown_and_unset_from_the_cli(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    ok = invoke(runner, agent, "governor", "set", "--scope", "fleet", "--daily-usd", "50", "--daily-tokens", "2000000")
    assert ok.exit_code == 0 and "fleet daily: 2,000,000 tokens and $50.0000" in ok.stdout
    assert invoke(runner, agent, "governor", "set", "--scope", "agent:agent", "--monthly-usd", "5",
                  "--tz", "Europe/Paris").exit_code == 0
    shown = json.loads(invoke(runner, agent, "governor", "show", "--json").stdout)
    scopes = {(r["scope"], r["window"]): r for r in shown["scopes"]}
    assert scopes[("fleet", "daily")]["total"] == {"tokens": 2_000_000, "usd": 50.0}
    assert scopes[("agent:agent", "monthly")]["tz"] == "Europe/Paris"
    text = invoke(runner, agent, "governor", "show").stdout
    assert "0 live sub-session(s) across the fleet" in text and "fleet daily" in text
    assert "1 limit(s) removed" in invoke(runner, agent, "governor", "unset", "--scope", "agent:agent").stdout
    assert [sl.scope for sl in open_store(f"sqlite:///{tmp_path}/governor.db").limits()] == ["fleet"]


@pytest.mark.parametrize("args, says", [
    (["set", "--scope", "team:x", "--daily-usd", "1"], "use fleet, agent:NAME or cadence:AGENT/NAME"),
    (["set", "--scope", "fleet"], "nothing to set"),
    (["set", "--scope", "fleet", "--daily-usd", "nan"], "must be a number of dollars"),
    (["set", "--scope", "fleet", "--daily-usd", "-1"], "must be a number of dollars"),
    (["set", "--scope", "fleet", "--daily-tokens", "-5"], "-5"),
    (["set", "--scope", "fleet", "--daily-usd", "1", "--tz", "Mars/Olympus"], "is not a time zone"),
    (["unset", "--scope", "fleet", "--window", "weekly"], "weekly"),
])
def test_a_bad_governor_argument_is_one_line_and_exit_2(runner: CliRunner, agent: Path, args: list[str],
                                                        says: str) -> None:
    result = invoke(runner, agent, "governor", *args)
    assert result.exit_code == 2 and says in one_line_error(result)


def test_no_store_configured_or_reachable_is_a_clear_error(runner: CliRunner, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    write_agent(bare)
    result = invoke(runner, bare, "governor", "show")
    assert result.exit_code == 78 and "MAESTRO_GOVERNOR_URL" in one_line_error(result)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://maestro:pw-hunter2-secret@127.0.0.1:{port}/db"
    result = invoke(runner, bare, "governor", "show", "--url", url)
    line = one_line_error(result)
    assert result.exit_code == 69 and "pw-hunter2-secret" not in line and "***" in line


def test_budget_shows_the_fleet_scopes_with_top_agents_and_cadences(runner: CliRunner, agent: Path,
                                                                   tmp_path: Path) -> None:
    from datetime import datetime, timezone

    store = open_store(f"sqlite:///{tmp_path}/governor.db")
    store.set_limit("fleet", "daily", usd=1.0)
    now = datetime.now(timezone.utc)
    for run, who in (("r1", "ann"), ("r2", "bob")):
        assert store.reserve(Lease(run, who, "memo", "h", 1, "t", 10, 0.1), now, lease_seconds=60,
                             max_live=None).admitted
        store.settle(run, tokens=10, usd=0.2 if who == "ann" else 0.1, measured=True, now=now)
    text = invoke(runner, agent, "budget").stdout
    assert "governor fleet daily" in text and "top agents: ann $0.2000, bob $0.1000" in text
    rows = json.loads(invoke(runner, agent, "budget", "--json").stdout)
    fleet = [r for r in rows if r.get("source") == "governor"]
    assert fleet[0]["spent"]["usd"] == pytest.approx(0.3) and fleet[0]["remaining"]["usd"] == pytest.approx(0.7)


def test_doctor_fails_on_an_unreachable_store_and_names_a_reachable_one(tmp_path: Path) -> None:
    from maestro_py.ops.probe import Probe
    from maestro_py.paths import Layout

    layout = write_agent(tmp_path / "a")
    down = Probe(env={"MAESTRO_GOVERNOR_URL": f"sqlite:///{tmp_path}/missing/g.db"}, layout=layout)
    check = check_governor(down)
    assert check.level is Level.FAIL and "no sub-session will spawn" in check.detail
    up = Probe(env={"MAESTRO_GOVERNOR_URL": f"sqlite:///{tmp_path}/g.db"}, layout=Layout(layout.root))
    assert check_governor(up).level is Level.OK
    assert check_governor(Probe(env={}, layout=layout)).detail.startswith("no governor store")


def test_the_store_password_is_masked_in_settings_errors_and_by_the_redactor() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MAESTRO_GOVERNOR_URL": "mysql://u:pw-s3cret-value@h/db"})
    assert "pw-s3cret-value" not in str(caught.value) and "***" in str(caught.value)
    redactor = Redactor({"MAESTRO_GOVERNOR_URL": "postgresql://u:pw%2Fs3cret@h/db"})
    assert redactor.text("error: pw%2Fs3cret and pw/s3cret") == "error: [REDACTED] and [REDACTED]"
