"""The budget governor end to end: the real daemon, the real CLI, the loopback API (1234 + 56 tokens a run)."""

from __future__ import annotations

import json

from fake_api import INPUT_TOKENS, OUTPUT_TOKENS, FakeMessagesAPI
from support import Agent, MakeAgent

from maestro_py.paths import Folder
from tests.fakes import tick_ids

RUN = INPUT_TOKENS + OUTPUT_TOKENS


def enqueue_distinct(agent: Agent, cadence: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        out = agent.maestro("enqueue", cadence, "--payload", json.dumps({"n": i}))
        assert out.returncode == 0, out.stderr
        ids.append(out.stdout.strip())
    return ids


def test_token_budget_two_runs_settle_third_waits_and_restart_keeps_spent(
        make_agent: MakeAgent, fake_api: FakeMessagesAPI) -> None:
    agent = make_agent({"memo": "Write the memo please."}, "[memo]\noverlap = 'allow'\nreserve_tokens = 1000\n",
                       MAESTRO_DAILY_TOKEN_BUDGET="3000")
    ids = enqueue_distinct(agent, "memo", 3)
    agent.run_once()
    assert fake_api.post_count() == 2
    assert sorted(tick_ids(agent.layout, Folder.DONE)) == sorted(ids[:2])
    assert tick_ids(agent.layout, Folder.INBOX) == [ids[2]]
    assert agent.tick(Folder.INBOX, ids[2])["attempts"] == 0
    assert [r["charged_tokens"] for r in agent.ledger()] == [RUN, RUN]
    # A restart in the same window reads spent from the ledger: still nothing runs.
    agent.run_once()
    assert fake_api.post_count() == 2
    budget = json.loads(agent.maestro("budget", "--json").stdout)
    (daily,) = [b for b in budget if b["scope"] == "global" and b["window"] == "daily"]
    assert daily["spent"]["tokens"] == 2 * RUN and daily["remaining"]["tokens"] == 3000 - 2 * RUN
    assert daily["runs"] == 2


def test_fan_out_of_twenty_stops_at_a_budget_of_five_runs(make_agent: MakeAgent, fake_api: FakeMessagesAPI) -> None:
    limit = 5 * RUN
    agent = make_agent({"fan": "Fan out please."}, "[fan]\noverlap = 'allow'\n",
                       MAESTRO_DAILY_TOKEN_BUDGET=str(limit), MAESTRO_MAX_LIVE_SUBSESSIONS="4",
                       MAESTRO_RESERVE_TOKENS="1000")
    enqueue_distinct(agent, "fan", 20)
    agent.run_once(timeout=120)
    rows = agent.ledger()
    spent = sum(r["charged_tokens"] for r in rows)
    reservation = max(r["reserved_tokens"] for r in rows)
    assert all(r["input_tokens"] == INPUT_TOKENS and r["output_tokens"] == OUTPUT_TOKENS for r in rows)
    assert spent - limit <= reservation  # overshoot within one reservation
    assert len(rows) < 20 and len(tick_ids(agent.layout, Folder.INBOX)) == 20 - len(rows)
    assert all(agent.tick(Folder.INBOX, t)["attempts"] == 0 for t in tick_ids(agent.layout, Folder.INBOX))
    status = agent.status()
    assert status["counters"]["deferred_budget"] > 0
    out = agent.maestro("budget")
    assert out.returncode == 0 and "global daily" in out.stdout
    print(f"\nfan-out: {len(rows)} runs, spent {spent} of {limit} tokens, overshoot {spent - limit}\n{out.stdout}")
