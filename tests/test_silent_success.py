"""A silent success (issue 12, item 6): exit 0 and `is_error: false` with no result text in zero turns is `unknown`."""

from __future__ import annotations

import json

from maestro_py.paths import Folder, Layout
from maestro_py.policy.failures import FailureClass, classify, failure_reason
from maestro_py.session.metering import CliResult, Usage
from maestro_py.session.runner import RunOutcome
from tests.fakes import FakeClock, FakeSpawner, enqueue, make_daemon, read_json, run_steps, write_agent


def _outcome(text: str, turns: int | None) -> RunOutcome:
    raw = {} if turns is None else {"num_turns": turns}
    return RunOutcome(4242, 0, None, False, False, 5,
                      CliResult("success", False, None, text, "s", Usage(0, 0, 0, 0, 0, {}), raw), "")


def test_exit_0_with_no_text_in_zero_turns_is_unknown_not_success() -> None:
    silent = _outcome("", 0)
    assert not silent.ok and classify(silent) is FailureClass.UNKNOWN
    assert "no result text and no turns" in failure_reason(silent)
    assert _outcome("done", 0).ok and _outcome("", 3).ok and _outcome("", None).ok


def test_a_silent_success_burns_an_attempt_and_is_not_settled_ok(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"memo": "write"})
    spawner = FakeSpawner(default="hang")
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_ATTEMPTS=1)
    (tick,) = enqueue(layout, clock, "memo")
    run_steps(daemon, 5)
    (session,) = spawner.sessions
    session.outcome = _outcome("", 0)
    run_steps(daemon, 5)
    assert not (layout.folder(Folder.DONE) / f"{tick}.json").exists()
    dead = read_json(layout.folder(Folder.DLQ) / f"{tick}.json")
    assert dead["attempts"] == 1 and dead["history"][-1]["failure_class"] == "unknown"
    (row,) = [json.loads(line) for line in layout.ledger_file.read_text().splitlines()]
    assert row["ok"] is False
