"""`maestro tick kill`: one of two live runs of the real CLI ended from another shell, the other left to finish."""

from __future__ import annotations

import json
import signal

from maestro_py.paths import Folder
from tests.e2e.fake_api import FakeMessagesAPI
from tests.e2e.support import MakeAgent
from tests.fakes import events, tick_ids, wait_for

TWO = {"MAESTRO_MAX_LIVE_SUBSESSIONS": "2"}


def _live(agent) -> set[str]:
    return {run["tick"] for run in agent.status().get("live_subsessions") or []}


def test_killing_one_of_two_live_runs_leaves_the_other_to_finish(make_agent: MakeAgent,
                                                                  fake_api: FakeMessagesAPI) -> None:
    fake_api.slow_seconds = 4.0
    agent = make_agent({"stuck": "Think forever. [[fake:hang]]", "steady": "Say hi slowly. [[fake:slow]]",
                        "hello": "Say hi."}, '[stuck]\nreserve_usd = 0.3\n', **TWO)
    hello = agent.enqueue("hello")  # proves the credentials: until then only one run at a time
    daemon = agent.start()
    try:
        wait_for(lambda: tick_ids(agent.layout, Folder.DONE) == [hello], timeout=20, what="the first run")
        stuck, steady = agent.enqueue("stuck"), agent.enqueue("steady")
        wait_for(lambda: _live(agent) == {stuck, steady}, timeout=20, what="both runs live")
        refused = agent.maestro("tick", "kill", "20000101T000000000000Z-0000001-00000001")
        assert refused.returncode != 0 and refused.stderr.count("\n") == 1
        killed = agent.maestro("tick", "kill", stuck[-6:], "--reason", "runaway")
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.strip() == f'killed {stuck}: in done/ with outcome "killed"'
        wait_for(lambda: tick_ids(agent.layout, Folder.DONE) == sorted([hello, stuck, steady]), timeout=20,
                 what="the other run to finish by itself")
        again = agent.maestro("tick", "kill", stuck)
        assert again.returncode == 1 and "is not running: it is done" in again.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)

    done = agent.tick(Folder.DONE, stuck)
    last = done["history"][-1]
    assert last["outcome"] == "killed" and last["reason"] == "killed by the operator: runaway"
    assert done["attempts"] == 1 and agent.tick(Folder.DONE, steady)["history"][-1]["outcome"] == "ok"
    rows = {row["tick"]: row for row in agent.ledger()}
    assert rows[stuck]["ok"] is False and rows[stuck]["metered"] is False  # usage unknown: charged its reservation
    assert rows[stuck]["charged_usd"] == 0.3 and rows[stuck]["cost_usd"] is None
    assert rows[steady]["ok"] is True and rows[steady]["metered"] is True
    stages = [e["stage"] for e in events(agent.layout) if e.get("id") == stuck]
    assert "kill_requested" in stages and stages[-1] == "done"
    assert agent.status()["counters"]["killed"] == 1
    assert agent.leftovers() == []


def test_a_kill_with_requeue_puts_the_tick_back_with_its_attempt_intact_and_serve_asks_the_same(
        make_agent: MakeAgent, fake_api: FakeMessagesAPI, tmp_path) -> None:
    from tests.serve_support import TOKEN, Served, bearer

    agent = make_agent({"stuck": "Think forever. [[fake:hang]]"}, "", MAESTRO_SERVE_TOKEN=TOKEN)
    stuck = agent.enqueue("stuck")
    daemon = agent.start()
    served = Served(agent.layout, tmp_path, MAESTRO_SERVE_TOKEN=TOKEN)
    try:
        wait_for(lambda: _live(agent) == {stuck}, timeout=20, what="the run live")
        assert served.request("POST", f"/v1/ticks/{stuck}/kill", b"{}").status == 401  # behind the token
        body = json.dumps({"requeue": True, "reason": "redeploy"}).encode()
        asked = served.request("POST", f"/v1/ticks/{stuck}/kill", body, bearer())
        assert asked.status == 202 and asked.json()["kill_requested"] is True
        wait_for(lambda: any(e["stage"] == "requeued" and e.get("id") == stuck for e in events(agent.layout)),
                 timeout=20, what="the tick requeued")  # back in inbox/, where the daemon claims it again
        daemon.send_signal(signal.SIGTERM)  # its drain requeues the new run too
        daemon.wait(timeout=30)
        gone = served.request("POST", f"/v1/ticks/{stuck}/kill", b"", bearer())
        assert gone.status == 409 and "not running" in gone.text
    finally:
        served.stop()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    back = agent.tick(Folder.INBOX, stuck)
    assert back["attempts"] == 0
    assert any(h.get("reason") == "killed by the operator: redeploy" for h in back["history"])
