"""`maestro runs` after a mixed run of the real CLI against the API fake: it agrees with the ledger and the folders."""

from __future__ import annotations

import json

from maestro_py.paths import Folder
from tests.e2e.fake_api import FakeMessagesAPI
from tests.e2e.support import MakeAgent
from tests.fakes import tick_ids


def test_runs_after_a_mixed_run_of_the_real_cli(make_agent: MakeAgent, fake_api: FakeMessagesAPI) -> None:
    agent = make_agent({"memo": "Write the memo.", "broken": "Say hi. [[fake:500]]",
                        "denied": "Look around. [[fake:calls:peek]]"}, "[broken]\nmax_attempts = 2\n")
    fake_api.register_calls("peek", [{"id": "toolu_peek", "name": "Bash", "input": {"command": "ls /"}}])
    ids = {name: agent.enqueue(name) for name in ("memo", "broken", "denied")}
    agent.run_once()

    out = agent.maestro("runs", "--json")
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)
    rows = agent.ledger()
    assert [(r["tick"], r["attempt"]) for r in runs] == [(r["tick"], r["attempt"]) for r in reversed(rows)]
    for run, row in zip(runs, reversed(rows)):
        assert (run["ok"], run["cost_usd"], run["tokens"], run["exit_code"]) == (
            row["ok"], row["cost_usd"], row["total_tokens"], row["exit_code"])
    by = {(r["tick"], r["attempt"]): r for r in runs}
    assert by[ids["memo"], 1]["outcome"] == "ok" and by[ids["memo"], 1]["folder"] == "done"
    assert [by[ids["broken"], n]["then"] for n in (1, 2)] == ["retried", "dead letter"]
    assert tick_ids(agent.layout, Folder.DLQ) == [ids["broken"]]
    assert by[ids["denied"], 1]["denials"] == {"count": 1, "tools": ["Bash"]}
    text = agent.maestro("runs", "--failed").stdout
    assert ids["broken"] in text and ids["memo"] not in text
