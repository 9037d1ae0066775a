"""`maestro tick kill`'s request files and the daemon's answer to them (in-process daemon, fake spawner)."""

from __future__ import annotations

from maestro_py.bus import kills
from maestro_py.paths import Folder, Layout
from tests.fakes import FakeClock, FakeSpawner, enqueue, events, make_daemon, read_json, run_steps, write_agent


def test_a_kill_request_ends_that_run_alone_and_settles_it_as_killed(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "", {"a": "[[fake:hang]]", "b": "[[fake:hang]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS="2")
    daemon.guardrails.credentials_verified = True
    (a,), (b,) = enqueue(layout, clock, "a"), enqueue(layout, clock, "b")
    run_steps(daemon, 3)
    assert spawner.count == 2
    kills.request(layout, a, requeue=False, reason="runaway", now=clock.now())
    run_steps(daemon, 3)
    stopped = [s for s in spawner.sessions if s.stop_requested]
    assert [s.spec.stdin.count(a.encode()) for s in stopped] == [1]  # that run only
    done = read_json(layout.folder(Folder.DONE) / f"{a}.json")
    assert done["history"][-1]["outcome"] == "killed" and done["history"][-1]["reason"] == \
        "killed by the operator: runaway"
    assert b in daemon.live.ids() and list(layout.kill_dir.iterdir()) == []
    row = [r for r in daemon.ledger.rows() if r["tick"] == a][0]
    assert row["metered"] is False and row["charged_usd"] > 0  # unknown usage: charged its reservation


def test_a_request_for_no_live_run_and_a_malformed_one_are_dropped(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "", {"a": "[[fake:hang]]"})
    daemon = make_daemon(layout, clock, FakeSpawner())
    layout.kill_dir.mkdir(parents=True, exist_ok=True)
    (layout.kill_dir / "junk.json").write_text("{not json")
    kills.request(layout, "20260101T000000000000Z-0000001-00000001", requeue=True, reason="x\ny", now=clock.now())
    run_steps(daemon, 2)
    assert list(layout.kill_dir.iterdir()) == []
    (ignored,) = [e for e in events(layout) if e["stage"] == "kill_ignored"]
    assert ignored["id"] == "20260101T000000000000Z-0000001-00000001"
