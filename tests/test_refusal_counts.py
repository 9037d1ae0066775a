"""The `skipped_*` / `deferred_*` counters count held ticks, not loop passes: a tick held by a gate counts once
per hold, in the daemon's counters, `consumer.json` and `maestro_refusals_total` alike (the counter names stay).
The gates look at each cadence's oldest runnable tick, so a tick behind it counts when its turn comes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from maestro_py.paths import Folder, Layout
from tests.fakes import FakeClock, FakeSpawner, enqueue, make_daemon, read_json, run_steps, tick_ids, write_agent


def refusals(layout: Layout) -> dict[str, float]:
    """`maestro_refusals_total` by reason, as node_exporter would read `state/metrics.prom`."""
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(layout.metrics_file.read_text())
            if family.name == "maestro_refusals" for sample in family.samples if sample.name.endswith("_total")}


def test_two_ticks_held_by_the_emergency_stop_count_two_however_long_it_lasts(layout: Layout,
                                                                               clock: FakeClock) -> None:
    # The user's steps: `maestro stop`, two ticks queued, the daemon loops on (84 passes counted 84).
    write_agent(layout, prompts={"memo": "Write the memo.", "digest": "Write the digest.", "notes": "Take notes."})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    layout.stop_file.write_text('{"reason": "spend spike"}')
    enqueue(layout, clock, "memo")
    enqueue(layout, clock, "digest")
    for _ in range(42):
        daemon.step()
        clock.advance(1)
    assert spawner.count == 0 and len(tick_ids(layout, Folder.INBOX)) == 2
    assert daemon.counters["skipped_emergency_stop"] == 2
    clock.advance(5)
    daemon._write_status(force=True)
    assert read_json(layout.consumer_file)["counters"]["skipped_emergency_stop"] == 2
    assert refusals(layout)["skipped_emergency_stop"] == 2
    enqueue(layout, clock, "notes")  # a new tick, held too: one more
    run_steps(daemon, 20)
    assert daemon.counters["skipped_emergency_stop"] == 3
    layout.stop_file.unlink()  # `maestro resume`: they run
    run_steps(daemon, 20)
    assert spawner.count == 3 and daemon.counters["skipped_emergency_stop"] == 3


def test_a_tick_let_through_and_held_again_counts_again(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, "[memo]\nmax_attempts = 5\n", {"memo": "[[fake:500]]"})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    daemon.guardrails.credentials_verified = True
    [tick] = enqueue(layout, clock, "memo")
    layout.stop_file.write_text("hold")
    run_steps(daemon, 10)
    assert daemon.counters["skipped_emergency_stop"] == 1
    layout.stop_file.unlink()
    daemon.step()  # let through: it runs and fails (500) ...
    assert spawner.count == 1
    layout.stop_file.write_text("hold again")
    run_steps(daemon, 10)  # ... goes back to inbox/ for another attempt, and is held again
    assert spawner.count == 1 and tick in tick_ids(layout, Folder.INBOX)
    assert daemon.counters["skipped_emergency_stop"] == 2


def test_one_tick_held_for_two_reasons_in_turn_counts_once_for_each(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={name: "[[fake:hang]]" for name in ("a", "b", "c")})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=1)
    daemon.guardrails.credentials_verified = True
    for name in ("a", "b", "c"):
        enqueue(layout, clock, name)
    run_steps(daemon, 30)  # one runs; the two others wait (one spawn per step, then the cap), pass after pass
    assert spawner.count == 1
    assert daemon.counters["skipped_pacing"] == 2 and daemon.counters["skipped_live_cap"] == 2
    layout.stop_file.write_text("hold")
    run_steps(daemon, 30)  # the stop ends the live run and requeues it: three ticks now held by the stop
    assert daemon.counters["skipped_emergency_stop"] == 3
    assert daemon.counters["skipped_live_cap"] == 2
