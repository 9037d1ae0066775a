"""The governor store's contract, run against both implementations: SQLite (always) and a real PostgreSQL
server started by the `pg_url` fixture (skipped, saying why, only where no server can be had)."""

from __future__ import annotations

import multiprocessing
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from maestro_py.errors import ConfigError
from maestro_py.fleet import open_store
from maestro_py.fleet.model import Lease, StoreUnavailable, check_url
from maestro_py.redact import mask_url
from maestro_py.fleet.store import KEEP_CHARGES_SECONDS, SqlStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
LEASE = 60.0


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/governor.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str) -> SqlStore:
    s = open_store(url)
    yield s
    s.close()


def lease(run: str, *, agent: str = "ann", cadence: str = "memo", tokens: float = 100, usd: float = 0.1,
          pid: int = 1, host: str = "h1") -> Lease:
    return Lease(run, agent, cadence, host, pid, f"tick-{run}", tokens, usd)


def reserve(store: SqlStore, run: str, now: datetime = NOW, max_live: int | None = None, **kw: object):
    return store.reserve(lease(run, **kw), now, lease_seconds=LEASE, max_live=max_live)  # type: ignore[arg-type]


def test_a_budget_admits_exactly_what_it_covers_and_a_settle_gives_back_the_difference(store: SqlStore) -> None:
    store.set_limit("fleet", "daily", tokens=500)
    assert [reserve(store, f"r{i}").admitted for i in range(6)] == [True] * 5 + [False]
    refused = reserve(store, "r9")
    assert (refused.reason, refused.scope, refused.window) == ("budget", "fleet", "daily")
    assert "0 tokens left" in refused.detail and refused.resets_at == datetime(2026, 12, 2, tzinfo=timezone.utc)
    store.settle("r0", tokens=40, usd=0.01, measured=True, now=NOW)  # spent 40 of its 100: 60 free, not enough
    assert not reserve(store, "r10").admitted
    store.settle("r1", tokens=30, usd=0.01, measured=True, now=NOW)  # 130 free now
    assert reserve(store, "r11").admitted
    assert len(store.live(NOW)) == 4


def test_a_full_pool_is_refused_before_any_budget_is_looked_at_and_nothing_is_written(store: SqlStore) -> None:
    store.set_limit("fleet", "daily", tokens=100)
    assert reserve(store, "a", max_live=1).admitted
    answer = reserve(store, "b", max_live=1)  # both the pool and the budget are full: the pool answers
    assert (answer.admitted, answer.reason, answer.live) == (False, "live_cap", 1)
    assert [r["run_id"] for r in store.live(NOW)] == ["a"] and store.charges() == []


def test_a_run_larger_than_a_whole_limit_never_fits(store: SqlStore) -> None:
    store.set_limit("agent:ann", "hourly", usd=0.05)
    answer = reserve(store, "big", usd=0.1)
    assert answer.never_fits and answer.scope == "agent:ann" and "more than the whole agent:ann hourly" in answer.detail
    assert reserve(store, "small", usd=0.01).admitted


def test_limits_apply_to_their_scope_only(store: SqlStore) -> None:
    store.set_limit("agent:ann", "daily", tokens=100)
    store.set_limit("cadence:bob/memo", "daily", tokens=100)
    assert reserve(store, "a1").admitted and not reserve(store, "a2").admitted
    assert reserve(store, "b1", agent="bob", cadence="inbox").admitted
    assert reserve(store, "b2", agent="bob", cadence="inbox").admitted  # bob's other cadence is unlimited
    assert reserve(store, "b3", agent="bob").admitted and not reserve(store, "b4", agent="bob").admitted


def test_windows_reset(store: SqlStore) -> None:
    store.set_limit("fleet", "hourly", tokens=100, tz="UTC")
    store.set_limit("fleet", "monthly", tokens=300, tz="UTC")
    assert reserve(store, "h1").admitted
    store.settle("h1", tokens=100, usd=0, measured=True, now=NOW)
    assert not reserve(store, "h2").admitted
    later = NOW + timedelta(hours=1)
    assert reserve(store, "h3", now=later).admitted
    store.settle("h3", tokens=100, usd=0, measured=True, now=later)
    assert reserve(store, "h4", now=later + timedelta(hours=1)).admitted
    store.settle("h4", tokens=100, usd=0, measured=True, now=later + timedelta(hours=1))
    refused = reserve(store, "h5", now=NOW + timedelta(hours=3))
    assert (refused.window, refused.resets_at) == ("monthly", datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert reserve(store, "h6", now=datetime(2027, 1, 1, 0, 30, tzinfo=timezone.utc)).admitted


def test_settles_are_idempotent_and_an_expired_lease_is_charged_its_reservation(store: SqlStore) -> None:
    assert reserve(store, "r1", tokens=100, usd=0.5).admitted
    store.settle("r1", tokens=10, usd=0.01, measured=True, now=NOW)
    store.settle("r1", tokens=10, usd=0.01, measured=True, now=NOW)  # pushed again from an outbox
    assert [(c["run_id"], c["tokens"], c["source"]) for c in store.charges()] == [("r1", 10, "settled")]

    assert reserve(store, "r2", tokens=100, usd=0.5).admitted
    later = NOW + timedelta(seconds=LEASE + 1)
    assert reserve(store, "r3", now=later).admitted  # a write after the lease ran out charges it
    expired = [c for c in store.charges() if c["run_id"] == "r2"]
    assert [(c["tokens"], c["usd"], c["measured"], c["source"]) for c in expired] == [(100, 0.5, 0, "lease_expired")]
    # The holder was only cut off: its real figures replace the charge, once.
    store.settle("r2", tokens=7, usd=0.02, measured=True, now=later)
    store.settle("r2", tokens=9, usd=0.09, measured=True, now=later)
    assert [(c["tokens"], c["source"]) for c in store.charges() if c["run_id"] == "r2"] == [(7, "settled")]


def test_a_renewed_lease_does_not_expire(store: SqlStore) -> None:
    assert reserve(store, "r1").admitted
    assert store.renew(["r1", "gone"], NOW + timedelta(seconds=50), lease_seconds=LEASE) == 1
    assert reserve(store, "r2", now=NOW + timedelta(seconds=100)).admitted
    assert {r["run_id"] for r in store.live(NOW)} == {"r1", "r2"} and store.charges() == []


def test_reclaim_charges_what_an_earlier_process_of_the_agent_left_on_this_host(store: SqlStore) -> None:
    for run, kw in {"old": dict(pid=10), "mine": dict(pid=20), "other_host": dict(pid=10, host="h2"),
                    "other_agent": dict(pid=10, agent="bob")}.items():
        assert reserve(store, run, **kw).admitted
    assert store.reclaim("ann", "h1", 20, NOW) == 1
    assert [(c["run_id"], c["source"]) for c in store.charges()] == [("old", "lease_expired")]
    assert {r["run_id"] for r in store.live(NOW)} == {"mine", "other_host", "other_agent"}


def test_release_drops_a_reservation_without_a_charge(store: SqlStore) -> None:
    assert reserve(store, "r1", max_live=1).admitted
    store.release("r1")
    assert store.live(NOW) == [] and store.charges() == []
    assert reserve(store, "r2", max_live=1).admitted


def test_limits_are_set_shown_and_unset(store: SqlStore) -> None:
    store.set_limit("fleet", "daily", usd=50)
    store.set_limit("fleet", "daily", tokens=2_000_000)  # the other axis is kept
    store.set_limit("agent:ann", "monthly", usd=10, tz="Europe/Paris")
    shown = {(sl.scope, sl.window): (sl.limit.tokens, sl.limit.usd, sl.tz) for sl in store.limits()}
    assert shown == {("fleet", "daily"): (2_000_000, 50, None), ("agent:ann", "monthly"): (None, 10, "Europe/Paris")}
    assert store.unset_limit("agent:ann") == 1 and store.unset_limit("fleet", "hourly") == 0
    with pytest.raises(ConfigError):
        store.set_limit("team:x", "daily", usd=1)
    with pytest.raises(ConfigError):
        store.set_limit("fleet", "weekly", usd=1)


def test_the_summary_names_the_top_agents_and_cadences(store: SqlStore) -> None:
    store.set_limit("fleet", "daily", usd=1.0)
    for run, agent, cadence, usd in (("1", "ann", "memo", 0.3), ("2", "bob", "inbox", 0.1), ("3", "ann", "x", 0.05)):
        assert reserve(store, run, agent=agent, cadence=cadence, usd=usd).admitted
        store.settle(run, tokens=10, usd=usd, measured=True, now=NOW)
    assert reserve(store, "live", usd=0.2).admitted
    fleet = store.summary(NOW)[0]
    assert fleet["scope"] == "fleet" and fleet["spent"]["usd"] == pytest.approx(0.45)
    assert fleet["reserved"]["usd"] == pytest.approx(0.2) and fleet["remaining"]["usd"] == pytest.approx(0.35)
    assert [a["agent"] for a in fleet["top_agents"]] == ["ann", "bob"]
    assert [c["cadence"] for c in fleet["top_cadences"]] == ["ann/memo", "bob/inbox", "ann/x"]
    assert (fleet["runs"], fleet["live"]) == (3, 1)


def test_old_charges_are_pruned(store: SqlStore) -> None:
    assert reserve(store, "old").admitted
    store.settle("old", tokens=1, usd=0, measured=True, now=NOW)
    assert store.prune(NOW + timedelta(seconds=KEEP_CHARGES_SECONDS - 10)) == 0
    assert store.prune(NOW + timedelta(seconds=KEEP_CHARGES_SECONDS + 10)) == 1


def _contend(url: str, worker: int, runs: int, out: multiprocessing.Queue) -> None:
    store = open_store(url)
    admitted = 0
    for i in range(runs):
        answer = store.reserve(lease(f"w{worker}-{i}", agent=f"a{worker}"), NOW, lease_seconds=LEASE, max_live=None)
        admitted += answer.admitted
    store.close()
    out.put(admitted)


def test_concurrent_reservers_never_overshoot(store: SqlStore, url: str) -> None:
    store.set_limit("fleet", "daily", tokens=100 * 25)
    store.ping()
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(url, w, 10, out)) for w in range(6)]
    for p in procs:
        p.start()
    admitted = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert admitted == 25 and len(store.live(NOW)) == 25


def test_an_unreachable_store_raises_store_unavailable_without_its_password(tmp_path: Path) -> None:
    missing = open_store(f"sqlite:///{tmp_path}/no/such/folder/governor.db")
    with pytest.raises(StoreUnavailable):
        missing.ping()
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://maestro:hunter2secret@127.0.0.1:{port}/maestro"
    pytest.importorskip("psycopg")
    with pytest.raises(StoreUnavailable) as caught:
        open_store(url).reserve(lease("x"), NOW, lease_seconds=LEASE, max_live=None)
    assert "hunter2secret" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert mask_url(url) == f"postgresql://maestro:***@127.0.0.1:{port}/maestro"


@pytest.mark.parametrize("bad", ["sqlite:///relative.db", "mysql://x/y", "governor.db"])
def test_a_store_url_that_cannot_work_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_url(bad)


def test_a_server_restart_between_calls_is_not_an_outage(pg_server, pg_url: str) -> None:
    store = open_store(pg_url)
    assert reserve(store, "before").admitted  # the store keeps this connection
    pg_server.restart()
    assert reserve(store, "after").admitted  # the dead connection is replaced, not reported as an outage
    assert {r["run_id"] for r in store.live(NOW)} == {"before", "after"}


def _in_time(call, seconds: float):  # noqa: ANN001, ANN202
    """`call()`'s result, or None if it still runs after `seconds` (it is left running in a daemon thread)."""
    import threading

    box: dict[str, object] = {}
    worker = threading.Thread(target=lambda: box.update(result=_outcome(call)), daemon=True)
    worker.start()
    worker.join(seconds)
    return box.get("result")


def _outcome(call):  # noqa: ANN001, ANN202
    try:
        return call()
    except StoreUnavailable as exc:
        return exc


def test_a_frozen_backend_cannot_hold_a_call_past_its_deadline(pg_server, pg_url: str, monkeypatch) -> None:
    """SIGSTOP of the daemon's backend (a frozen VM, a stalled disk): its kernel still acknowledges every packet, so
    only the client's own deadline ends the wait; the call is then tried once on a fresh connection."""
    import os
    import signal
    import time

    from maestro_py.fleet import postgres

    monkeypatch.setattr(postgres, "CALL_DEADLINE", 1.0)
    store = open_store(pg_url)
    assert reserve(store, "warm").admitted
    backend = store._run(lambda cur: store._q(cur, "SELECT pg_backend_pid()").fetchone()[0], write=False)
    os.kill(backend, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = _in_time(lambda: reserve(store, "frozen"), 10)
        waited = time.monotonic() - started
    finally:
        os.kill(backend, signal.SIGCONT)
    assert answer is not None, "the call still waits on a frozen backend after 10 s"
    assert waited < 5 and (isinstance(answer, StoreUnavailable) or answer.admitted), (waited, answer)
    store.close()


def test_a_client_frozen_holding_the_reserve_lock_is_cut_off_by_the_server(pg_server, pg_url: str) -> None:
    """One client stopped inside a reserve (the lock row held) must not stop every daemon of the fleet: the server
    ends its idle transaction, and the others reserve again."""
    from maestro_py.fleet import postgres

    store = open_store(pg_url)
    assert reserve(store, "first").admitted
    frozen = open_store(pg_url)._connect()  # another daemon's connection, with maestro's session settings
    frozen.execute("SELECT id FROM maestro_lock WHERE id = 1 FOR UPDATE")  # and then nothing: frozen
    try:
        import time

        started = time.monotonic()
        answer = _outcome(lambda: reserve(store, "blocked"))  # waits at most a lock timeout per try (two tries)
        assert time.monotonic() - started < 2 * postgres.STATEMENT_TIMEOUT_MS / 1000 + 2
        time.sleep(max(0.0, started + postgres.IDLE_IN_TRANSACTION_MS / 1000 + 1 - time.monotonic()))
        assert reserve(store, "after").admitted, answer  # the server ended the frozen transaction
    finally:
        frozen.close()
        store.close()


def test_a_deleted_or_replaced_sqlite_file_is_never_used_as_a_hidden_copy(tmp_path: Path) -> None:
    """The file deleted under a running daemon: it fails closed (a new empty store would have no limits); a new
    file in its place: its limits apply at once, not the unlinked inode's."""
    path = tmp_path / "governor.db"
    store = open_store(f"sqlite:///{path}")
    assert reserve(store, "first").admitted
    path.unlink()
    with pytest.raises(StoreUnavailable):
        reserve(store, "after-delete")
    assert not path.exists()  # nothing made up in its place
    fresh = open_store(f"sqlite:///{path}")
    fresh.set_limit("agent:ann", "daily", usd=0.000001)
    fresh.close()
    answer = reserve(store, "after-replace")
    assert not answer.admitted and answer.reason == "budget"  # the new file's limit
    store.close()


def test_a_client_whose_clock_is_ahead_cannot_expire_anothers_live_lease(pg_server, pg_url: str) -> None:
    """Root B's clock 600 s ahead, MAESTRO_FLEET_MAX_LIVE=1: leases are timed by the server's clock, so B's reserve
    does not find A's live lease expired and both run at once."""
    import time

    a, b = open_store(pg_url), open_store(pg_url)
    b._wall = lambda: time.time() + 600  # type: ignore[attr-defined]  # B's machine
    real = datetime.now(timezone.utc)
    assert a.reserve(lease("a-run", agent="a"), real, lease_seconds=120, max_live=1).admitted
    answer = b.reserve(lease("b-run", agent="b"), real + timedelta(seconds=600), lease_seconds=120, max_live=1)
    assert not answer.admitted and answer.reason == "live_cap"
    assert [r["run_id"] for r in a.live(real)] == ["a-run"] and a.charges() == []
    a.close()
    b.close()
