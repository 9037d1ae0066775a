"""`maestro cost`: spend from the ledger by cadence, model or day, with totals; unmeasured is never 0."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

from maestro_py.clock import iso
from maestro_py.ops import cost
from maestro_py.paths import Layout
from tests.fakes import FakeClock, FakeSpawner, enqueue, invoke, ledger_rows, make_daemon, run_steps, write_agent

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _row(ts: datetime, cadence: str, usd: float | None, tokens: int | None, **extra: object) -> dict:
    measured = usd is not None or tokens is not None
    row = {"ts": iso(ts), "tick": f"t-{cadence}-{ts.timestamp()}", "cadence": cadence, "attempt": 1, "ok": measured,
           "cost_usd": usd, "input_tokens": tokens, "output_tokens": 0 if tokens is not None else None,
           "cache_read_tokens": 0 if tokens is not None else None,
           "cache_creation_tokens": 0 if tokens is not None else None, "total_tokens": tokens,
           "per_model": {"claude-sonnet-4-5": {"input_tokens": tokens, "output_tokens": 0, "cache_read_tokens": 0,
                                               "cache_creation_tokens": 0, "cost_usd": usd}} if measured else {},
           "metered": measured, "charged_tokens": tokens if measured else 20000,
           "charged_usd": usd if measured else 0.25}
    row.update(extra)
    return row


def _ledger(layout: Layout) -> None:
    last_month = NOW - timedelta(days=40)  # in an earlier month, rotated into its archive
    archived = _row(last_month, "memo", 1.0, 1000)
    (layout.state_dir / f"cost-ledger-{last_month.astimezone():%Y-%m}.jsonl").write_text(json.dumps(archived) + "\n")
    two_models = _row(NOW - timedelta(hours=2), "memo", 0.30, 300)
    two_models["per_model"] = {
        "claude-sonnet-4-5": {"input_tokens": 100, "output_tokens": 0, "cache_read_tokens": 0,
                              "cache_creation_tokens": 0, "cost_usd": 0.10},
        "claude-haiku-4-5": {"input_tokens": 200, "output_tokens": 0, "cache_read_tokens": 0,
                             "cache_creation_tokens": 0, "cost_usd": 0.20}}
    raw = _row(NOW - timedelta(hours=1), "brief", 0.05, 50, per_model={},
               modelUsage={"claude-opus-4-8": {"inputTokens": 50, "outputTokens": 0, "cacheReadInputTokens": 0,
                                               "cacheCreationInputTokens": 0, "costUSD": 0.05}})
    lines = [archived,  # a rotation cut short leaves it in both files: counted once
             two_models, raw, _row(NOW - timedelta(minutes=30), "flaky", None, None),
             _row(NOW - timedelta(minutes=20), "flaky", None, None), _row(NOW - timedelta(days=10), "brief", 0.5, 500)]
    layout.ledger_file.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"ts": "torn')


def test_by_cadence_with_totals_counts_unmeasured_runs_apart(runner: CliRunner, layout: Layout) -> None:
    _ledger(layout)
    doc = json.loads(invoke(runner, layout.root, "cost", "--json").stdout)
    total = doc["total"]
    assert total["runs"] == 6 and abs(total["cost_usd"] - 1.85) < 1e-9 and total["tokens"] == 1850
    assert total["cost_unknown_runs"] == 2 and total["tokens_unknown_runs"] == 2
    assert abs(total["charged_unknown_usd"] - 0.5) < 1e-9
    groups = {g["key"]: g for g in doc["groups"]}
    assert groups["flaky"]["runs"] == 2 and groups["flaky"]["cost_usd"] == 0 and groups["flaky"]["cost_unknown_runs"] == 2
    assert [g["key"] for g in doc["groups"]] == ["memo", "brief", "flaky"]  # the largest cost first
    text = invoke(runner, layout.root, "cost").stdout
    flaky = next(line for line in text.splitlines() if line.startswith("flaky"))
    assert "unknown" in flaky and "$0.0000" not in flaky  # never a bare zero for what was not measured
    assert "2 run(s) with no measured cost are not counted as $0" in text


def test_since_by_model_and_by_day(runner: CliRunner, layout: Layout) -> None:
    _ledger(layout)
    doc = json.loads(invoke(runner, layout.root, "cost", "--by", "model", "--since", "7d", "--json").stdout)
    groups = {g["key"]: g for g in doc["groups"]}
    assert doc["total"]["runs"] == 4  # the archived row and the one 10 days old are out
    assert groups["claude-haiku-4-5"]["cost_usd"] == 0.2 and groups["claude-sonnet-4-5"]["tokens"] == 100
    assert groups["claude-opus-4-8"]["runs"] == 1  # from a raw modelUsage
    assert groups[cost.UNMEASURED]["runs"] == 2 and groups[cost.UNMEASURED]["charged_unknown_usd"] == 0.5
    day = json.loads(invoke(runner, layout.root, "cost", "--by", "day", "--since",
                            f"{(NOW - timedelta(days=30)).astimezone():%Y-%m-%d}", "--json").stdout)
    keys = [g["key"] for g in day["groups"]]
    assert keys == sorted(keys) and f"{(NOW - timedelta(days=10)).astimezone():%Y-%m-%d}" in keys
    bad = invoke(runner, layout.root, "cost", "--since", "last tuesday")
    assert bad.exit_code == 2 and "--since" in bad.stderr


def test_what_a_daemon_ran_is_what_cost_reports(runner: CliRunner, layout: Layout, clock: FakeClock) -> None:
    """The user's steps: two runs, one whose result could not be read; `maestro cost` says one is unknown."""
    write_agent(layout, prompts={"memo": "write", "broken": "[[fake:garbage]]"})
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_MAX_ATTEMPTS=1)
    enqueue(layout, clock, "memo")
    enqueue(layout, clock, "broken")
    run_steps(daemon, 10)
    rows = ledger_rows(layout)
    assert len(rows) == 2
    doc = json.loads(invoke(runner, layout.root, "cost", "--json").stdout)
    assert doc["total"]["runs"] == 2 and doc["total"]["cost_usd"] == 0.00757 and doc["total"]["tokens"] == 1290
    assert doc["total"]["cost_unknown_runs"] == 1
    broken = next(g for g in doc["groups"] if g["key"] == "broken")
    assert broken["charged_unknown_usd"] == next(r["charged_usd"] for r in rows if r["cadence"] == "broken") > 0
