"""`state/metrics.prom`: what it says after a mixed run matches the ledger, the folders and `maestro budget`."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from maestro_py.daemon import metrics as metrics_module
from maestro_py.paths import Folder, Layout
from tests.fakes import (
    FakeClock, FakeSpawner, daemon_env, enqueue, events, ledger_rows, maestro, make_daemon, read_json, run_steps,
    tick_ids, write_agent,
)

MIXED = """
[beat]
mode = "inline"
handler = "noop"

[broken]
mode = "inline"
handler = "false"
max_attempts = 2

[check]
mode = "guarded"
guard = "false"

[flaky]
max_attempts = 2
"""

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def read_metrics(layout: Layout, agent: str = "agent") -> Samples:
    """Every sample of the metrics file, by name then sorted labels (the parser must take the whole file); each
    carries the `agent` label, left out here."""
    out: Samples = {}
    for family in text_string_to_metric_families(layout.metrics_file.read_text()):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("agent") == agent, sample
            out.setdefault(sample.name, {})[tuple(sorted(labels.items()))] = sample.value
    return out


def by(samples: Samples, name: str, *keys: str) -> Counter:
    """`name`'s values summed by the given labels."""
    out: Counter = Counter()
    for labels, value in samples.get(name, {}).items():
        found = dict(labels)
        out[tuple(found[k] for k in keys) if len(keys) > 1 else found[keys[0]]] += value
    return +out  # zeros dropped


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def write_now(daemon, clock: FakeClock) -> None:
    """A status write the metrics take (they rewrite at most every second, unchanged ones every 5 s)."""
    clock.advance(metrics_module.HEARTBEAT_EVERY)
    daemon._write_status(force=True)


def mixed_run(layout: Layout, clock: FakeClock) -> tuple[object, FakeSpawner]:
    write_agent(layout, MIXED, {"memo": "Write the memo.", "flaky": "[[fake:500]]", "check": "Check."})
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner, MAESTRO_DAILY_USD_BUDGET="5")
    enqueue(layout, clock, "beat", 3)
    enqueue(layout, clock, "broken", 2)
    enqueue(layout, clock, "check", 1)
    enqueue(layout, clock, "memo", 2)
    enqueue(layout, clock, "memo", 3, payload={"same": True})  # one run, two merged into it
    enqueue(layout, clock, "flaky", 1)
    for _ in range(6):
        run_steps(daemon, 10)
        clock.advance(1)
    assert not tick_ids(layout, Folder.INBOX) and not tick_ids(layout, Folder.CLAIMED)
    write_now(daemon, clock)
    return daemon, spawner


def test_counters_match_the_ledger_and_the_folders_after_a_mixed_run(layout: Layout, clock: FakeClock) -> None:
    daemon, spawner = mixed_run(layout, clock)
    m = read_metrics(layout)

    # Ticks settled, by cadence and outcome, as the folders hold them.
    done = Counter()
    for tick_id in tick_ids(layout, Folder.DONE):
        tick = read_json(layout.folder(Folder.DONE) / f"{tick_id}.json")
        done[tick["cadence"], tick["history"][-1]["outcome"]] += 1
    dead = Counter(read_json(layout.folder(Folder.DLQ) / f"{i}.json")["cadence"] for i in tick_ids(layout, Folder.DLQ))
    settled = by(m, "maestro_ticks_settled_total", "cadence", "outcome")
    assert {k: v for k, v in settled.items() if k[1] not in ("retry", "dlq", "requeued")} == done
    assert done == {("beat", "ok"): 3, ("check", "nothing_to_do"): 1, ("memo", "ok"): 3,
                    ("memo", "skipped_overlap"): 2}
    assert {c: v for (c, o), v in settled.items() if o == "dlq"} == dead == {"broken": 2, "flaky": 1}
    retries = Counter(e["cadence"] for e in events(layout) if e["stage"] == "retry")
    assert {c: v for (c, o), v in settled.items() if o == "retry"} == retries == {"broken": 2, "flaky": 1}
    depth = by(m, "maestro_queue_depth", "folder")
    assert depth == {"done": sum(done.values()), "dlq": sum(dead.values())}

    # Sub-sessions, tokens and dollars, as the ledger has them.
    rows = ledger_rows(layout)
    assert by(m, "maestro_spawns_total", "cadence") == Counter(r["cadence"] for r in rows) == {"memo": 3, "flaky": 2}
    assert spawner.count == 5
    assert by(m, "maestro_subsessions_total", "cadence", "result") == Counter(
        (r["cadence"], "ok" if r["ok"] else "failed") for r in rows)
    tokens = Counter()
    per_model = Counter()
    for row in rows:
        tokens[row["cadence"]] += row["total_tokens"] or 0
        for model, usage in row["per_model"].items():
            per_model[row["cadence"], model] += sum(usage.get(k) or 0 for k in metrics_module.TOKEN_KINDS)
    assert by(m, "maestro_tokens_total", "cadence") == +tokens
    assert by(m, "maestro_tokens_total", "cadence", "model") == +per_model
    assert one(m, "maestro_tokens_total", cadence="memo", model="claude-opus-4-8", kind="input") == 3 * 1234
    cost = by(m, "maestro_cost_usd_total", "cadence")
    assert cost["memo"] == pytest.approx(sum(r["cost_usd"] for r in rows if r["cadence"] == "memo"))
    charged = by(m, "maestro_charged_usd_total", "cadence")
    for cadence in ("memo", "flaky"):
        assert charged[cadence] == pytest.approx(sum(r["charged_usd"] for r in rows if r["cadence"] == cadence))
    assert by(m, "maestro_charged_tokens_total", "cadence") == +Counter(
        {c: sum(r["charged_tokens"] for r in rows if r["cadence"] == c) for c in ("memo", "flaky")})

    # The daemon's own counters, and what it is doing now.
    refusals = by(m, "maestro_refusals_total", "reason")
    assert refusals == {k: v for k, v in daemon.counters.items() if k.startswith(("skipped_", "deferred_"))
                        and k != "skipped_overlap" and v}
    assert one(m, "maestro_ticks_claimed_total") == daemon.counters["claimed"]
    assert one(m, "maestro_up") == 1 and one(m, "maestro_live_subsessions") == 0
    assert one(m, "maestro_heartbeat_timestamp_seconds") == clock.now().timestamp()
    assert one(m, "maestro_start_time_seconds") == daemon.started_at.timestamp()
    assert set(by(m, "maestro_last_success_timestamp_seconds", "cadence")) == {"beat", "check", "memo"}
    assert one(m, "maestro_budget_limit", scope="global", window="daily", unit="usd") == 5
    assert one(m, "maestro_budget_spent", scope="global", window="daily", unit="usd") == pytest.approx(
        sum(r["charged_usd"] for r in rows))


def test_no_label_carries_a_tick_id(layout: Layout, clock: FakeClock) -> None:
    mixed_run(layout, clock)
    ids = set(tick_ids(layout, Folder.DONE)) | set(tick_ids(layout, Folder.DLQ))
    assert len(ids) == 12
    values = {value for samples in read_metrics(layout).values() for labels in samples for _, value in labels}
    assert not [v for v in values if any(i in v or v in i for i in ids)]
    assert values <= {"beat", "broken", "check", "memo", "flaky", "claude-opus-4-8", "_unknown", "0.1.0", "global",
                      "daily", "tokens", "usd", *metrics_module.OUTCOMES, *metrics_module.REFUSALS,
                      *metrics_module.TOKEN_KINDS.values(), "ok", "failed", "inbox", "claimed", "done", "dlq"}


def test_label_values_are_bounded(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, '[beat]\nmode = "inline"\nhandler = "noop"\n')
    daemon = make_daemon(layout, clock, FakeSpawner())
    for i in range(metrics_module.MAX_CADENCES + 50):  # ticks of as many cadences as a hostile enqueuer likes
        daemon.events.emit("dlq", id=f"t{i}", cadence=f"c{i}", reason="unknown cadence")
    write_now(daemon, clock)
    cadences = by(read_metrics(layout), "maestro_ticks_settled_total", "cadence")
    assert len(cadences) == metrics_module.MAX_CADENCES + 1
    assert cadences[metrics_module.OTHER] == 50  # those beyond the limit
    daemon.events.emit("done", id="t", cadence="beat", outcome="ok")  # a registry cadence still has its own
    write_now(daemon, clock)
    assert one(read_metrics(layout), "maestro_ticks_settled_total", cadence="beat", outcome="ok") == 1


def test_the_file_is_replaced_whole_and_never_read_half_written(layout: Layout, clock: FakeClock) -> None:
    daemon, _ = mixed_run(layout, clock)
    held = open(layout.metrics_file, "rb")  # a reader that opened the file before the writes (its inode stays ours)
    first = os.fstat(held.fileno())
    assert first.st_mode & 0o777 == 0o644 & ~_umask()  # node_exporter usually runs as another user
    stop = threading.Event()
    seen: list[int] = []
    torn: list[str] = []

    def read() -> None:
        while not stop.is_set():
            text = layout.metrics_file.read_text()
            try:
                families = {f.name for f in text_string_to_metric_families(text)}
            except ValueError:
                families = set()
            if not {"maestro_up", "maestro_circuit_breaker_state"} <= families:  # the first and the last family
                torn.append(text)
            seen.append(len(text))

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 30
    writes = 0
    try:
        while (writes < 300 or len(seen) < 50) and time.monotonic() < deadline:
            write_now(daemon, clock)
            writes += 1
    finally:
        stop.set()
        reader.join()
    assert torn == [] and len(seen) >= 50
    assert layout.metrics_file.stat().st_ino != first.st_ino  # a new file renamed over the old one,
    with held:
        old = held.read().decode()  # which the early reader still reads whole
    assert old.startswith("# HELP maestro_up") and "maestro_circuit_breaker_state" in old
    assert sorted(p.name for p in layout.state_dir.iterdir()) == ["cadence-bus", "cost-ledger.jsonl", "metrics.prom"]
    assert not list(layout.folder(Folder.TMP).iterdir())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_writes_are_rate_limited_and_an_idle_file_is_rewritten_as_a_heartbeat(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, '[beat]\nmode = "inline"\nhandler = "noop"\n')
    daemon = make_daemon(layout, clock, FakeSpawner())
    daemon._write_status(force=True)
    inode = layout.metrics_file.stat().st_ino
    enqueue(layout, clock, "beat")
    run_steps(daemon, 3)
    assert layout.metrics_file.stat().st_ino == inode  # changed, but less than a second ago
    clock.advance(metrics_module.WRITE_EVERY)
    daemon._write_status(force=True)
    changed = layout.metrics_file.stat().st_ino
    assert changed != inode and one(read_metrics(layout), "maestro_queue_depth", folder="done") == 1
    clock.advance(metrics_module.WRITE_EVERY)
    daemon._write_status(force=True)
    assert layout.metrics_file.stat().st_ino == changed  # nothing changed: no rewrite yet
    clock.advance(metrics_module.HEARTBEAT_EVERY)
    daemon._write_status(force=True)
    assert layout.metrics_file.stat().st_ino != changed
    assert one(read_metrics(layout), "maestro_heartbeat_timestamp_seconds") == clock.now().timestamp()


def test_breakers_halts_and_holds_are_gauges(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, prompts={"flaky": "[[fake:500]]", "memo": "Write it."})
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_CIRCUIT_THRESHOLD=2, MAESTRO_CIRCUIT_OPEN_SECONDS=600)
    enqueue(layout, clock, "flaky", 3)
    run_steps(daemon, 10)
    write_now(daemon, clock)
    m = read_metrics(layout)
    assert by(m, "maestro_circuit_breaker_state", "cadence") == {"flaky": 2}  # memo: closed (0)
    assert one(m, "maestro_circuit_breaker_state", cadence="memo") == 0
    assert one(m, "maestro_refusals_total", reason="skipped_circuit_open") > 0
    clock.advance(600)
    daemon.housekeeping.run(clock.monotonic())
    write_now(daemon, clock)
    assert one(read_metrics(layout), "maestro_circuit_breaker_state", cadence="flaky") == 1  # half-open

    layout.prompt_file("memo").write_text("[[fake:401]]")
    enqueue(layout, clock, "memo")
    run_steps(daemon, 5)
    (layout.bus_dir / "STOP").write_text("enough")
    run_steps(daemon, 2)
    write_now(daemon, clock)
    m = read_metrics(layout)
    assert one(m, "maestro_auth_halt") == 1 and one(m, "maestro_emergency_stop") == 1
    assert one(m, "maestro_quota_hold") == 0 and one(m, "maestro_claude_missing") == 0


def test_a_folder_changed_behind_the_daemon_is_counted_again(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, '[beat]\nmode = "inline"\nhandler = "noop"\n')
    daemon = make_daemon(layout, clock, FakeSpawner())
    enqueue(layout, clock, "beat", 4)
    run_steps(daemon, 3)
    write_now(daemon, clock)
    assert one(read_metrics(layout), "maestro_queue_depth", folder="done") == 4
    for tick_id in tick_ids(layout, Folder.DONE)[:3]:  # `maestro prune` in another process, say
        (layout.folder(Folder.DONE) / f"{tick_id}.json").unlink()
    clock.advance(metrics_module.RESCAN_EVERY)
    daemon._write_status(force=True)
    assert one(read_metrics(layout), "maestro_queue_depth", folder="done") == 1


def test_a_file_that_cannot_be_written_is_one_event_and_the_loop_goes_on(layout: Layout, clock: FakeClock) -> None:
    write_agent(layout, '[beat]\nmode = "inline"\nhandler = "noop"\n')
    layout.metrics_file.mkdir(parents=True)  # rename(2) cannot replace a directory
    daemon = make_daemon(layout, clock, FakeSpawner())
    for _ in range(3):
        enqueue(layout, clock, "beat")
        run_steps(daemon, 2)
        write_now(daemon, clock)
    assert len(tick_ids(layout, Folder.DONE)) == 3
    failed = [e for e in events(layout) if e["stage"] == "metrics_write_failed"]
    assert len(failed) == 1 and "metrics.prom" in failed[0]["file"]
    assert not list(layout.folder(Folder.TMP).iterdir())


def test_budget_gauges_match_maestro_budget_json(layout: Layout, tmp_path: Path) -> None:
    write_agent(layout, "[memo]\nbudget_usd_daily = 1\nbudget_tokens_daily = 900000\n",
                {"memo": "Write it.", "other": "And this."})
    env = daemon_env(tmp_path, MAESTRO_DAILY_USD_BUDGET="5", MAESTRO_DAILY_TOKEN_BUDGET="2000000",
                     MAESTRO_AGENT_NAME="Inbox Bot")
    for cadence in ("memo", "memo", "other"):
        maestro(layout, "enqueue", cadence, "--payload", json.dumps({"n": os.urandom(4).hex()}), env=env)
    assert maestro(layout, "run", "--once", env=env).returncode == 0
    out = maestro(layout, "budget", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    m = read_metrics(layout, agent="inbox-bot")
    assert one(m, "maestro_up") == 0  # the daemon stopped
    assert {(r["scope"], r["window"]) for r in rows} == {("global", "daily"), ("cadence:memo", "daily")}
    for row in rows:
        for name, key in (("limit", "total"), ("spent", "spent"), ("reserved", "reserved"), ("remaining", "remaining")):
            for unit in ("tokens", "usd"):
                labels = tuple(sorted({"scope": row["scope"], "window": row["window"], "unit": unit}.items()))
                got = m[f"maestro_budget_{name}"].get(labels)
                assert got == pytest.approx(row[key][unit]), (name, row["scope"], unit)
    assert one(m, "maestro_budget_spent", scope="cadence:memo", window="daily", unit="tokens") == 2 * (1234 + 56)
