"""The subscription's usage limit with the real CLI logged in by an OAuth token: one session meets the limit,
every tick waits without burning an attempt, the hold survives a restart, and lifts (issue 12, item 2)."""

from __future__ import annotations

import time

from fake_api import FakeMessagesAPI

from maestro_py.paths import Folder
from tests.e2e.support import MakeAgent, files_containing
from tests.fakes import events, tick_ids

OAUTH = "sk-ant-oat01-" + "q" * 60


def test_the_usage_limit_costs_one_session_and_holds_every_tick(make_agent: MakeAgent,
                                                                fake_api: FakeMessagesAPI) -> None:
    reset = int(time.time()) + 3600
    fake_api.extra_headers = {"anthropic-ratelimit-unified-status": "rejected",
                              "anthropic-ratelimit-unified-reset": str(reset),
                              "anthropic-ratelimit-unified-representative-claim": "five_hour"}
    fake_api.mode = "429"
    agent = make_agent({name: "Say hi please." for name in ("memo", "brief", "digest")},
                       "[defaults]\nmax_attempts = 2\n",
                       ANTHROPIC_API_KEY=None, CLAUDE_CODE_OAUTH_TOKEN=OAUTH, MAESTRO_PREFER_SUBSCRIPTION_AUTH="1",
                       MAESTRO_MAX_LIVE_SUBSESSIONS="4")
    ticks = [agent.enqueue("memo"), agent.enqueue("brief"), agent.enqueue("digest")]
    agent.run_once()
    assert fake_api.post_count() == 1  # one session met the limit; the rest never started
    assert tick_ids(agent.layout, Folder.DLQ) == [] and sorted(tick_ids(agent.layout, Folder.INBOX)) == sorted(ticks)
    assert all(agent.tick(Folder.INBOX, t)["attempts"] == 0 for t in ticks)
    (hold,) = [e for e in events(agent.layout) if e["stage"] == "quota_hold"]
    assert hold["kind"] == "five_hour"
    status = agent.maestro("status").stdout
    assert "usage limit (five_hour): resets" in status
    assert agent.status()["counters"]["skipped_quota_hold"] > 0

    agent.run_once()  # a restarted daemon keeps the hold (circuit-open.json)
    assert fake_api.post_count() == 1

    fake_api.extra_headers = {}
    fake_api.mode = "ok"
    assert agent.maestro("circuit", "reset", "--all").returncode == 0
    agent.run_once()
    assert sorted(tick_ids(agent.layout, Folder.DONE)) == sorted(ticks)
    assert files_containing(agent.root, OAUTH) == []  # the token is in no file under the root


def test_headroom_pauses_at_the_configured_utilization(make_agent: MakeAgent, fake_api: FakeMessagesAPI) -> None:
    fake_api.extra_headers = {"anthropic-ratelimit-unified-status": "allowed_warning",
                              "anthropic-ratelimit-unified-5h-utilization": "0.95",
                              "anthropic-ratelimit-unified-5h-surpassed-threshold": "0.9",
                              "anthropic-ratelimit-unified-representative-claim": "five_hour"}
    agent = make_agent({name: "Say hi please." for name in ("memo", "brief")}, "",
                       ANTHROPIC_API_KEY=None, CLAUDE_CODE_OAUTH_TOKEN=OAUTH, MAESTRO_PREFER_SUBSCRIPTION_AUTH="1",
                       MAESTRO_QUOTA_PAUSE_AT="0.9")
    first, second = agent.enqueue("memo"), agent.enqueue("brief")
    agent.run_once()
    assert tick_ids(agent.layout, Folder.DONE) == [first] and tick_ids(agent.layout, Folder.INBOX) == [second]
    assert fake_api.post_count() == 1
    assert "usage five_hour: 95%" in agent.maestro("status").stdout


def test_after_the_reset_one_probe_runs_first_then_the_rest(make_agent: MakeAgent, fake_api: FakeMessagesAPI) -> None:
    fake_api.mode = "429"
    fake_api.extra_headers = {"anthropic-ratelimit-unified-status": "rejected",
                              "anthropic-ratelimit-unified-reset": str(int(time.time()) + 3),
                              "anthropic-ratelimit-unified-representative-claim": "five_hour"}
    agent = make_agent({name: "Say hi please." for name in ("memo", "brief", "digest")}, "",
                       ANTHROPIC_API_KEY=None, CLAUDE_CODE_OAUTH_TOKEN=OAUTH, MAESTRO_PREFER_SUBSCRIPTION_AUTH="1",
                       MAESTRO_MAX_LIVE_SUBSESSIONS="4", MAESTRO_QUOTA_MIN_HOLD_SECONDS="2")
    ticks = [agent.enqueue("memo"), agent.enqueue("brief"), agent.enqueue("digest")]
    agent.run_once()
    assert fake_api.post_count() == 1 and tick_ids(agent.layout, Folder.DONE) == []
    fake_api.mode, fake_api.extra_headers = "ok", {}
    time.sleep(3.5)  # the reset the API announced (clamped to at least MAESTRO_QUOTA_MIN_HOLD_SECONDS)
    agent.run_once()
    assert sorted(tick_ids(agent.layout, Folder.DONE)) == sorted(ticks)
    assert all(agent.tick(Folder.DONE, t)["attempts"] == 1 for t in ticks)  # the success only: no burnt one
    stages = [e["stage"] for e in events(agent.layout) if e["stage"] in ("spawned", "quota_hold_lifted")]
    after = stages[stages.index("spawned", 1):]  # from the first spawn after the hold
    assert after[:2] == ["spawned", "quota_hold_lifted"]  # the probe alone; only then the others
    assert after.count("spawned") == 3 and fake_api.post_count() == 4
