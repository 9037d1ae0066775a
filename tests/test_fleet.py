"""The fleet governor inside the daemon: in-process daemons of several agent roots sharing one SQLite store,
driven step by step with the fake clock and spawner."""

from __future__ import annotations

import shutil
import socket
from datetime import timedelta
from pathlib import Path

from maestro_py.daemon.loop import Daemon
from maestro_py.fleet import open_store
from maestro_py.fleet.gate import RETRY_SECONDS
from maestro_py.fleet.model import Lease
from maestro_py.paths import Folder, Layout
from tests.fakes import (FakeClock, FakeSpawner, enqueue, events, ledger_rows, make_daemon, read_json, run_steps,
                         tick_ids, write_agent)

RUN_TOKENS = 1290  # what one fake run spends (and so what a reservation of exactly one run is)
MEMO = f'[memo]\nmode = "escalate"\nreserve_tokens = {RUN_TOKENS}\nreserve_usd = 0.01\n'


def agent(tmp_path: Path, name: str, registry: str = MEMO) -> Layout:
    return write_agent(tmp_path / name, registry, {"memo": "write the memo [[fake:ok]]"})


def daemon(layout: Layout, clock: FakeClock, spawner: FakeSpawner, url: str, **env: object) -> Daemon:
    d = make_daemon(layout, clock, spawner, MAESTRO_GOVERNOR_URL=url, **env)
    d.guardrails.credentials_verified = True
    return d


def three_roots_at_once(tmp_path: Path, clock: FakeClock, url: str, *, tokens: int,
                        registry: str = MEMO) -> tuple[FakeSpawner, list[Layout], list[Daemon]]:
    """Three roots with three ticks each, a fleet daily limit of `tokens`, their daemons stepped in turn."""
    open_store(url).set_limit("fleet", "daily", tokens=tokens)
    spawner = FakeSpawner()
    roots = [agent(tmp_path, f"a{i}", registry) for i in range(3)]
    daemons = [daemon(lay, clock, spawner, url) for lay in roots]
    for lay in roots:
        enqueue(lay, clock, "memo", 3)
    for _ in range(10):
        for d in daemons:
            d.step()
    return spawner, roots, daemons


def test_roots_sharing_a_store_share_its_budget_and_waiting_ticks_keep_their_attempts(
        tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path}/governor.db"
    spawner, roots, daemons = three_roots_at_once(tmp_path, clock, url, tokens=3 * RUN_TOKENS)  # exactly three runs
    assert spawner.count == 3
    waiting = [t for lay in roots for t in tick_ids(lay, Folder.INBOX)]
    assert len(waiting) == 6
    assert all(read_json(lay.folder(Folder.INBOX) / f"{t}.json")["attempts"] == 0
               for lay in roots for t in tick_ids(lay, Folder.INBOX))
    assert sum(d.counters["deferred_fleet_budget"] for d in daemons) > 0
    refused = [e for lay in roots for e in events(lay) if e["stage"] == "fleet_budget_exhausted"]
    assert refused and refused[0]["scope"] == "fleet" and "fleet daily budget" in refused[0]["reason"]
    charges = open_store(url).charges()
    assert len(charges) == 3 and {c["source"] for c in charges} == {"settled"}
    assert sum(c["tokens"] for c in charges) == 3 * RUN_TOKENS  # spent == the budget, not a token over
    rows = [r for lay in roots for r in ledger_rows(lay)]
    assert sorted(r["run_id"] for r in rows) == sorted(c["run_id"] for c in charges)  # the same run ids


def test_a_full_fleet_pool_refuses_before_reserving_and_a_settled_run_frees_its_slot(
        tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path}/governor.db"
    spawner = FakeSpawner(default="hang")
    a, b = agent(tmp_path, "a", MEMO.replace("[[fake:ok]]", "")), agent(tmp_path, "b")
    da = daemon(a, clock, spawner, url, MAESTRO_FLEET_MAX_LIVE=1)
    db = daemon(b, clock, spawner, url, MAESTRO_FLEET_MAX_LIVE=1)
    a.prompt_file("memo").write_text("hang here")
    enqueue(a, clock, "memo")
    enqueue(b, clock, "memo")
    run_steps(da, 3)
    run_steps(db, 3)
    assert spawner.count == 1 and db.counters["skipped_fleet_live_cap"] > 0
    store = open_store(url)
    assert [r["agent"] for r in store.live(clock.now())] == ["a"]  # b's refusal held nothing
    spawner.sessions[0].finish("ok")
    run_steps(da, 2)
    run_steps(db, 2)
    assert spawner.count == 2 and store.live(clock.now()) == []  # b's run took the slot, ran and gave it back


def test_an_unreachable_store_stops_spawns_not_inline_work_and_spawning_resumes_by_itself(
        tmp_path: Path, clock: FakeClock) -> None:
    folder = tmp_path / "store"
    url = f"sqlite:///{folder}/governor.db"  # the folder does not exist yet: the store cannot be opened
    lay = agent(tmp_path, "a", MEMO + '[ping]\nmode = "inline"\nhandler = "noop"\n')
    spawner = FakeSpawner()
    d = daemon(lay, clock, spawner, url)
    enqueue(lay, clock, "memo")
    enqueue(lay, clock, "ping")
    run_steps(d, 5)
    assert spawner.count == 0 and d.counters["skipped_governor_unavailable"] > 0
    assert len(tick_ids(lay, Folder.DONE)) == 1  # the inline tick ran
    (memo,) = tick_ids(lay, Folder.INBOX)
    assert read_json(lay.folder(Folder.INBOX) / f"{memo}.json")["attempts"] == 0
    assert [e["stage"] for e in events(lay)].count("governor_unavailable") == 1
    d._write_status(force=True)
    status = read_json(lay.consumer_file)["governor"]
    assert status["available"] is False and "governor.db" in status["store"] and status["since"]

    folder.mkdir()
    clock.advance(RETRY_SECONDS)
    run_steps(d, 5)
    assert spawner.count == 1 and tick_ids(lay, Folder.DONE)
    assert "governor_available" in [e["stage"] for e in events(lay)]
    d._write_status(force=True)
    assert read_json(lay.consumer_file)["governor"]["available"] is True


def test_a_settle_the_store_cannot_take_waits_in_the_outbox_and_is_pushed_once(tmp_path: Path,
                                                                              clock: FakeClock) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    url = f"sqlite:///{folder}/governor.db"
    lay = agent(tmp_path, "a", MEMO.replace("[[fake:ok]]", ""))
    lay.prompt_file("memo").write_text("hang here")
    spawner = FakeSpawner(default="hang")
    d = daemon(lay, clock, spawner, url)
    enqueue(lay, clock, "memo")
    run_steps(d, 2)
    assert spawner.count == 1
    d.fleet.store.close()
    moved = tmp_path / "elsewhere"
    folder.rename(moved)  # the store is gone while the run lives
    spawner.sessions[0].finish("ok")
    run_steps(d, 2)
    assert tick_ids(lay, Folder.DONE)  # the tick settled all the same
    (row,) = ledger_rows(lay)
    outbox = lay.fleet_outbox_file.read_text().splitlines()
    assert len(outbox) == 1 and row["run_id"] in outbox[0]
    d._write_status(force=True)
    assert read_json(lay.consumer_file)["governor"]["outbox"] == 1

    moved.rename(folder)
    clock.advance(RETRY_SECONDS)
    run_steps(d, 2)
    assert not lay.fleet_outbox_file.exists()
    charges = open_store(url).charges()
    assert [(c["run_id"], c["tokens"], c["source"]) for c in charges] == [(row["run_id"], RUN_TOKENS, "settled")]
    assert open_store(url).live(clock.now()) == []


def test_a_guard_that_finds_nothing_to_do_gives_its_reservation_back(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path}/governor.db"
    lay = agent(tmp_path, "a", '[memo]\nmode = "guarded"\nguard = "noop"\n')
    (lay.root / "handlers.py").write_text("def nothing(tick):\n    return False\n")
    lay.registry_file.write_text('[memo]\nmode = "guarded"\nguard = "handlers:nothing"\n')
    spawner = FakeSpawner()
    d = daemon(lay, clock, spawner, url, MAESTRO_FLEET_MAX_LIVE=1)
    enqueue(lay, clock, "memo", 2)
    run_steps(d, 4)
    assert spawner.count == 0 and len(tick_ids(lay, Folder.DONE)) == 2
    assert open_store(url).live(clock.now()) == [] and open_store(url).charges() == []


def test_a_restarted_daemon_charges_the_lease_its_predecessor_left(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path}/governor.db"
    lay = agent(tmp_path, "a", MEMO.replace("[[fake:ok]]", ""))
    lay.prompt_file("memo").write_text("hang here")
    store = open_store(url)
    from maestro_py.state import root_id

    left = Lease("old-run", "a", "memo", f"{socket.gethostname()}#{root_id(lay)}", 1, "t-old", 1000, 0.01)
    assert store.reserve(left, clock.now(), lease_seconds=120, max_live=None).admitted
    d = daemon(lay, clock, FakeSpawner(), url)
    run_steps(d, 1)
    assert [(c["run_id"], c["tokens"], c["source"]) for c in store.charges()] == [("old-run", 1000, "lease_expired")]
    assert "governor_reclaimed" in [e["stage"] for e in events(lay)]
    clock.advance(timedelta(hours=1).total_seconds())
    shutil.rmtree(lay.root / "state", ignore_errors=True)  # nothing local is needed to keep the charge
    assert len(store.charges()) == 1


def test_the_overshoot_is_at_most_what_runs_live_together_spend_beyond_their_reservations(
        tmp_path: Path, clock: FakeClock) -> None:
    """Each run reserves 1,000 tokens and spends 1,290: three fit a 3,000-token budget at once, so the fleet
    ends 3 × 290 over it, and not one run more (the fourth waits)."""
    url = f"sqlite:///{tmp_path}/governor.db"
    low = MEMO.replace(f"reserve_tokens = {RUN_TOKENS}", "reserve_tokens = 1000")
    spawner, _, _ = three_roots_at_once(tmp_path, clock, url, tokens=3000, registry=low)
    spent = sum(c["tokens"] for c in open_store(url).charges())
    assert spawner.count == 3 and spent - 3000 == 3 * (RUN_TOKENS - 1000)


def test_two_roots_whose_folders_share_a_name_never_take_each_others_leases(tmp_path: Path, clock: FakeClock) -> None:
    """`/…/clientA/agent` and `/…/clientB/agent` are both agent `agent` in the store: B's start-up must not reclaim
    A's live lease (both would run past MAESTRO_FLEET_MAX_LIVE=1), nor say "an earlier process of this agent"."""
    url = f"sqlite:///{tmp_path}/governor.db"
    spawner = FakeSpawner(default="hang")
    first = write_agent(tmp_path / "clientA" / "agent", prompts={"memo": "Write."})
    a = make_daemon(first, clock, spawner, MAESTRO_GOVERNOR_URL=url, MAESTRO_FLEET_MAX_LIVE=1)
    a.guardrails.credentials_verified = True
    enqueue(first, clock, "memo")
    run_steps(a, 3)
    assert spawner.count == 1
    second = write_agent(tmp_path / "clientB" / "agent", prompts={"memo": "Write."})
    b = make_daemon(second, clock, spawner, MAESTRO_GOVERNOR_URL=url, MAESTRO_FLEET_MAX_LIVE=1)
    b.fleet.pid = 4_000_000  # B is another process, as in production
    b.guardrails.credentials_verified = True
    enqueue(second, clock, "memo")
    run_steps(b, 5)
    assert spawner.count == 1  # the pool of one is A's
    assert len(open_store(url).live(clock.now())) == 1 and not open_store(url).charges()
    assert not [e for e in events(second) if e["stage"] == "governor_reclaimed"]
    assert b.counters["skipped_fleet_live_cap"] == 1


def test_the_loop_never_waits_on_a_store_that_does_not_answer(tmp_path: Path, clock: FakeClock) -> None:
    """A tarpit store (every call hangs): each admit returns within the gate's wait, the store counts as
    unavailable (spawns fail closed), and a reservation that arrives after the loop stopped waiting is given back."""
    import threading
    import time

    from maestro_py.bus.events import EventLog
    from maestro_py.fleet import gate as fleet_gate
    from maestro_py.fleet.gate import FleetGate
    from maestro_py.paths import Layout
    from maestro_py.policy.budget import Estimate

    real = open_store(f"sqlite:///{tmp_path}/governor.db")
    release = threading.Event()
    calls: list[str] = []

    class Tarpit:
        url = real.url

        def reserve(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            calls.append("reserve")
            release.wait(10)
            return real.reserve(*args, **kwargs)

        def release(self, run_id: str) -> None:
            calls.append("release")
            real.release(run_id)

        def close(self) -> None:
            real.close()

        def __getattr__(self, name: str):  # noqa: ANN204 - reclaim, renew, prune, settle: the real store's
            return getattr(real, name)

    lay = Layout(tmp_path / "agent")
    lay.root.mkdir()
    lay.ensure()
    g = FleetGate(Tarpit(), agent="a", host="h", pid=1, max_live=None, lease_seconds=120,  # type: ignore[arg-type]
                  outbox=tmp_path / "outbox.jsonl", events=EventLog(lay, clock=clock), clock=clock)
    waited = []
    for tick in ("t1", "t2", "t3"):
        started = time.monotonic()
        answer = g.admit(tick, "memo", Estimate(100, 0.1, "test"), clock.now())
        waited.append(time.monotonic() - started)
        assert not answer.admitted and answer.reason == "unavailable"
        clock.advance(fleet_gate.RETRY_SECONDS)
    assert max(waited) < fleet_gate.WAIT_SECONDS + 0.5 and calls == ["reserve"]  # one call in flight, no pile-up
    release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "release" not in calls:
        clock.advance(fleet_gate.RETRY_SECONDS)
        g.housekeep()  # what the daemon's loop does each step
        time.sleep(0.05)
    assert "release" in calls  # the late reservation of t1 went back
    assert "t1" not in {r["tick"] for r in real.live(clock.now())}
    g.close()
