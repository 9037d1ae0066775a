"""What the API says about retrying reaches the daemon through the real CLI's stream-json output (hardening 18)."""

from __future__ import annotations

from fake_api import FakeMessagesAPI

from maestro_py.paths import Folder
from tests.e2e.support import MakeAgent
from tests.fakes import tick_ids


def test_a_5xx_the_api_said_not_to_retry_is_dead_lettered_at_once(make_agent: MakeAgent,
                                                                   fake_api: FakeMessagesAPI) -> None:
    """`x-should-retry: false` used to be ignored: each extra attempt cost a CLI start and its requests."""
    fake_api.should_retry = False
    agent = make_agent({"broken": "Say hi please. [[fake:500]]"}, "[broken]\nmax_attempts = 3\n",
                       CLAUDE_CODE_MAX_RETRIES="2")
    tick = agent.enqueue("broken")
    agent.run_once()
    assert tick_ids(agent.layout, Folder.DLQ) == [tick]
    dead = agent.tick(Folder.DLQ, tick)
    assert dead["attempts"] == 1 and dead["history"][-1]["failure_class"] == "permanent"
    assert "the API said not to retry it" in dead["dlq_reason"]
    assert fake_api.post_count() == 1  # the CLI did not retry either


def test_a_5xx_the_cli_retried_is_still_transient(make_agent: MakeAgent, fake_api: FakeMessagesAPI) -> None:
    agent = make_agent({"broken": "Say hi please. [[fake:500]]"}, "[broken]\nmax_attempts = 2\n",
                       CLAUDE_CODE_MAX_RETRIES="1")
    tick = agent.enqueue("broken")
    agent.run_once()
    dead = agent.tick(Folder.DLQ, tick)
    assert dead["attempts"] == 2 and dead["history"][-1]["failure_class"] == "transient"
    assert fake_api.post_count() == 4  # two attempts, each retried once by the CLI
