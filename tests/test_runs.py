"""`maestro runs` (issue 26, item 3): the settled runs newest first, from the ledger and the bus folders, with a run
still going listed first as running; the status page's "Runs" table is the same list.

Everything goes through real `maestro` processes: a mixed `maestro run --once` with the fake claude (a success, a
tick that fails into `dlq/`, one that waits in `inbox/` for its retry, an unmeasured run), then a daemon whose
sub-session sleeps, and `maestro serve` on a loopback port.
"""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from maestro_py.clock import iso, parse_iso
from maestro_py.paths import Folder, Layout
from tests.fakes import (daemon_env, ledger_rows, maestro, read_json, spawns, start_daemon, tick_ids, wait_for,
                         write_agent)
from tests.serve_support import Served

REGISTRY = """
[flaky]
max_attempts = 3

[weird]
max_attempts = 1
"""
PROMPTS = {"memo": "Write the memo.", "broken": "[[fake_claude:api_error:500]]",
           "flaky": "[[fake_claude:api_error:503]]", "weird": "[[fake_claude:garbage]]"}


def runs_json(layout: Layout, *args: str, env: dict[str, str]) -> list[dict[str, Any]]:
    result = maestro(layout, "runs", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mixed_run(layout: Layout, env: dict[str, str]) -> dict[str, str]:
    """One tick per cadence through `maestro run --once`: cadence -> tick id."""
    ids = {name: maestro(layout, "enqueue", name, env=env).stdout.strip() for name in PROMPTS}
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    return ids


def test_runs_agree_with_the_ledger_and_the_folders(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", REGISTRY, PROMPTS)
    env = daemon_env(tmp_path, TZ="Asia/Tokyo")
    ids = mixed_run(layout, env)
    rows = ledger_rows(layout)
    assert len(rows) == 6  # memo 1, broken 2 (then dlq/), flaky 2 (then inbox/), weird 1 (unmeasured, dlq/)
    # Ledger rows of three days ago, as a rotation or an earlier day leaves them: before today's.
    old = datetime.now(timezone.utc) - timedelta(days=3)
    early = {**rows[0], "ts": iso(old), "tick": "20260101T000000000000Z-0000001-0000abcd", "duration_ms": 90_000,
             "denials": {"count": 3, "tools": ["Write", "Bash", "Write"]}}
    layout.ledger_file.write_text(json.dumps(early) + "\n" + layout.ledger_file.read_text())

    found = runs_json(layout, env=env)
    assert [(r["tick"], r["attempt"], r["ended"]) for r in found] == \
        [(row["tick"], row["attempt"], row["ts"]) for row in reversed([early, *rows])]
    for run, row in zip(found, reversed([early, *rows])):
        assert run["state"] == "settled" and run["ok"] is row["ok"] and run["cadence"] == row["cadence"]
        assert run["exit_code"] == row["exit_code"] and run["duration_ms"] == row["duration_ms"]
        assert run["cost_usd"] == row["cost_usd"] and run["tokens"] == row["total_tokens"]
        assert run["charged_usd"] == row["charged_usd"] and run["metered"] is row["metered"]
        assert parse_iso(run["started"]) == parse_iso(row["ts"]) - timedelta(milliseconds=row["duration_ms"])
    by = {(r["tick"], r["attempt"]): r for r in found}
    memo, weird = by[ids["memo"], 1], by[ids["weird"], 1]
    assert memo["outcome"] == "ok" and memo["folder"] == "done" and memo["then"] is None
    assert [ids["memo"]] == [t for t in tick_ids(layout, Folder.DONE) if t == ids["memo"]]
    assert tick_ids(layout, Folder.DLQ) == sorted([ids["broken"], ids["weird"]])
    assert tick_ids(layout, Folder.INBOX) == [ids["flaky"]]
    assert (by[ids["broken"], 1]["then"], by[ids["broken"], 2]["then"]) == ("retried", "dead letter")
    assert by[ids["broken"], 2]["folder"] == "dlq" and by[ids["broken"], 2]["failure"] == "transient"
    queued = read_json(layout.folder(Folder.INBOX) / f"{ids['flaky']}.json")
    flaky = by[ids["flaky"], 2]
    assert (by[ids["flaky"], 1]["then"], flaky["then"], flaky["folder"]) == ("retried", "retry", "inbox")
    assert flaky["retry_at"] == queued["not_before"] and queued["attempts"] == 2
    assert weird["outcome"] == "failed" and weird["then"] == "dead letter" and weird["failure"] == "unknown"
    assert weird["cost_usd"] is None and weird["tokens"] is None and weird["charged_usd"] > 0  # unknown, not $0
    assert found[-1]["folder"] is None  # its tick is gone (pruned): the run is still listed
    assert found[-1]["denials"] == early["denials"] and memo["denials"] is None  # {"count": 0} is none

    text = maestro(layout, "runs", env=env).stdout.splitlines()
    assert text[0].split() == ["started", "tick", "cadence", "attempt", "duration", "outcome", "exit", "tokens",
                               "cost", "denials"]
    line = {ids[name]: next(t for t in text if ids[name] in t) for name in ("memo", "weird", "flaky")}
    assert " JST " in line[ids["memo"]] and "$0.0076" in line[ids["memo"]] and "1,290" in line[ids["memo"]]
    assert "unknown (charged $0.2500)" in line[ids["weird"]] and "$0.0000" not in line[ids["weird"]]
    assert "failed (unknown) → dead letter" in line[ids["weird"]]
    assert re.search(r"failed \(transient\) → retry at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d JST", line[ids["flaky"]])
    assert len(text) == 1 + 7 + 1 and "not $0" in text[-1]  # header, the runs, the note on the unmeasured one
    assert text[-2].split()[-3:] == ["3:", "Bash,", "Write"] and "1 min 30 s" in text[-2]

    failed = runs_json(layout, "--failed", env=env)
    assert [(r["tick"], r["attempt"]) for r in failed] == [(r["tick"], r["attempt"]) for r in found if not r["ok"]]
    assert len(failed) == 5
    assert [(r["tick"], r["attempt"]) for r in runs_json(layout, "--cadence", "flaky", env=env)] == \
        [(ids["flaky"], 2), (ids["flaky"], 1)]
    assert runs_json(layout, "-n", "2", env=env) == found[:2]
    assert runs_json(layout, "--since", "24h", env=env) == found[:-1]  # the row of three days ago is out
    assert runs_json(layout, "--since", "24h", "-n", "1", "--cadence", "memo", env=env) == [memo]
    assert runs_json(layout, "--cadence", "nothing", env=env) == []
    assert maestro(layout, "runs", "--cadence", "nothing", env=env).stdout.strip() == "no runs of nothing in the ledger"
    bad = maestro(layout, "runs", "--since", "yesterday", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("maestro: --since:")


def test_a_live_run_is_listed_first_as_running_and_on_the_page(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", "", {"memo": "Write the memo.", "slow": "[[fake_claude:sleep:30]]"})
    env = daemon_env(tmp_path)
    memo = maestro(layout, "enqueue", "memo", env=env).stdout.strip()
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    slow = maestro(layout, "enqueue", "slow", env=env).stdout.strip()
    proc = start_daemon(layout, env)
    served = None
    try:
        wait_for(lambda: len(spawns(tmp_path)) == 2, what="the slow run to start")
        found = wait_for(lambda: (lambda r: r if r and r[0]["state"] == "running" else None)(
            runs_json(layout, env=env)), what="the slow run listed as running")
        live = found[0]
        assert (live["tick"], live["cadence"], live["attempt"], live["outcome"]) == (slow, "slow", 1, "running")
        assert live["folder"] == "claimed" and live["pid"] == int(spawns(tmp_path)[1].split()[0])
        assert live["cost_usd"] is None and live["ended"] is None and live["duration_ms"] >= 0
        assert [(r["tick"], r["outcome"]) for r in found[1:]] == [(memo, "ok")]
        line = maestro(layout, "runs", env=env).stdout.splitlines()[1]
        assert slow in line and " running " in line and "so far" in line
        assert runs_json(layout, "--failed", env=env) == []  # a running run has not failed
        assert [r["tick"] for r in runs_json(layout, "--cadence", "memo", env=env)] == [memo]

        served = Served(layout, tmp_path)
        page = served.request("GET", "/")
        assert page.status == 200
        html = page.text
        assert "<h2>Runs (the last 50)</h2>" in html
        listed = re.findall(r'<tr class="run" data-tick="([^"]*)" data-state="([^"]*)">', html)
        shown = runs_json(layout, env=env)
        assert listed == [(r["tick"], r["state"]) for r in shown] == [(slow, "running"), (memo, "settled")]
        links = re.findall(r'<a href="(/runs/[^"]*)" title="[^"]*"><code>([^<]*)</code></a>', html)
        assert links == [(f"/runs/{slow}", f"…{slow[-6:]}"), (f"/runs/{memo}", f"…{memo[-6:]}")]
    finally:
        if served is not None:
            served.stop()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    # Drained: the slow run was ended and its tick requeued; it is no longer listed as running.
    after = runs_json(layout, env=env)
    assert all(r["state"] == "settled" for r in after) and after[0]["tick"] == slow
    assert after[0]["then"] == "requeued" and after[0]["folder"] == "inbox"
