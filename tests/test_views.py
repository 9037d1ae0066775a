"""One read-model per operator view: `status`, `budget`, `circuit list` and `doctor` agree on the numbers."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from maestro_py.cli import cli
from maestro_py.clock import SystemClock, iso
from maestro_py.config import Settings
from maestro_py.ops import doctor, views
from maestro_py.ops.probe import Level, Probe
from maestro_py.paths import Layout

ENV = {"MAESTRO_DAILY_USD_BUDGET": "2", "MAESTRO_RESERVE_USD": "0.1"}


def cli_json(layout: Layout, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--root", str(layout.root), *args, "--json"], env=ENV)
    # `status` exits 3 here: no daemon runs (tests/test_status_health.py covers its codes)
    assert result.exit_code == (3 if args[0] == "status" else 0), result.output
    return json.loads(result.stdout)


def memo_with_a_limit(layout: Layout) -> None:
    (layout.root / "cadences").mkdir(exist_ok=True)
    (layout.root / "cadences" / "memo.md").write_text("Write the memo.\n")
    (layout.root / "cadences.toml").write_text("[memo]\nbudget_usd_daily = 0.5\n")


def test_status_budget_and_doctor_read_the_same_budget(layout: Layout) -> None:
    memo_with_a_limit(layout)
    layout.ledger_file.write_text(json.dumps({"ts": iso(SystemClock().now()), "cadence": "memo", "ok": True,
                                              "total_tokens": 1200, "cost_usd": 0.3}) + "\n")
    rows = cli_json(layout, "budget")
    assert [(r["scope"], r["window"]) for r in rows] == [("global", "daily"), ("cadence:memo", "daily")]
    assert rows[1]["remaining"]["usd"] == 0.2 and rows[0]["spent"]["tokens"] == 1200
    assert cli_json(layout, "status")["budget"] == rows
    check = doctor.check_budget(Probe(layout, ENV))
    assert check.level is Level.OK and check.detail == "global daily: $1.7000 left; cadence:memo daily: $0.2000 left"


def test_registry_left_out_means_global_limits_only(layout: Layout) -> None:
    memo_with_a_limit(layout)
    rows = views.budget_rows(layout, Settings.from_env(ENV), None, SystemClock().now())
    assert [r["scope"] for r in rows] == ["global"]


def test_circuit_list_status_and_doctor_read_the_same_circuits(layout: Layout) -> None:
    now = SystemClock().now()
    breakers, file = views.load_breakers(layout)
    breakers.open_manually("zeta", now, 600)
    breakers.open_manually("alpha", now, None)
    file.save(breakers.to_doc(now))
    listed = cli_json(layout, "circuit", "list")
    assert list(listed) == ["alpha", "zeta"] == list(views.open_circuits(layout))
    assert cli_json(layout, "status")["circuits"] == listed
    halt, circuits = doctor.check_circuits(Probe(layout, {}))
    assert halt.level is Level.OK and circuits.detail.startswith("2 open: alpha (open until reset), zeta (open until ")


def test_an_invalid_circuit_file_is_one_message_everywhere(layout: Layout) -> None:
    layout.circuit_file.write_text("not json")
    result = CliRunner().invoke(cli, ["--root", str(layout.root), "circuit", "list"])
    assert result.exit_code == 1
    (fail,) = doctor.check_circuits(Probe(layout, {}))
    assert fail.level is Level.FAIL and result.stderr.strip() == f"maestro: {fail.detail}"


NEVER = ("memo will never run: one run reserves 20,000 tokens (MAESTRO_RESERVE_TOKENS), more than the whole limit "
         "of 1,000 tokens; raise the limit or lower the reservation")


def test_a_limit_smaller_than_one_reservation_says_never_in_budget_and_status(layout: Layout) -> None:
    """Not "remaining 1,000" alone: the default reservation (20,000) is more than the limit, so memo never runs."""
    (layout.root / "cadences").mkdir(exist_ok=True)
    (layout.root / "cadences" / "memo.md").write_text("Write the memo.\n")
    (layout.root / "cadences.toml").write_text("[tidy]\nhandler = 'noop'\n")  # spends nothing
    env = {"MAESTRO_DAILY_TOKEN_BUDGET": "1000"}

    def invoke(*args: str) -> Any:
        result = CliRunner().invoke(cli, ["--root", str(layout.root), *args], env=env)
        assert result.exit_code == (3 if args[0] == "status" else 0), result.output  # status: no daemon runs
        return result

    (daily,) = [r for r in json.loads(invoke("budget", "--json").stdout) if r["window"] == "daily"]
    assert daily["remaining"]["tokens"] == 1000
    assert daily["never_fits"] == [{"cadence": "memo", "unit": "tokens", "basis": "default", "estimate_tokens": 20000,
                                    "limit_tokens": 1000, "estimate_usd": 0.25, "limit_usd": None}]
    assert f"  {NEVER}" in invoke("budget").stdout.splitlines()
    assert f"budget global daily: {NEVER}" in invoke("status").stdout.splitlines()
    # A reservation that fits the limit is not "never", whatever is left.
    (layout.root / "cadences.toml").write_text("[memo]\nreserve_tokens = 800\n")
    (daily,) = [r for r in json.loads(invoke("budget", "--json").stdout) if r["window"] == "daily"]
    assert daily["never_fits"] == [] and "never" not in invoke("status").stdout
