"""Disk trouble: the agent root on a 4 MiB tmpfs fills up, or turns read-only, under a running daemon.

The daemon must say so on stderr (its event log is on the broken disk), keep running, lose nothing,
resume by itself once the disk is usable again, and settle every tick in done/ exactly once — without
burning attempts or writing history twice for the run whose settling the disk interrupted.
`test_disk_full_injected` drives the same failure in-process (ENOSPC injected at the bus seam), so it
runs where mounting is impossible, and pins down the exact interleavings; the real-disk tests are `slow`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from maestro_py.daemon.loop import Daemon
from maestro_py.paths import Folder, Layout
from tests.fakes import (
    REPO, FakeSpawner, daemon_env, events, ledger_rows, make_daemon, read_json, wait_for, write_agent,
)
from tests.torture.support import TORTURE_ENV, folder_ids, new_tick, publish, runs_per_tick, stage, status_pid

REGISTRY = """
[defaults]
overlap = "allow"
timeout_seconds = 60

[beat]
mode = "inline"
handler = "noop"

[work]
overlap = "allow"
"""


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); test_disk_full_injected covers it")
    yield mnt
    for target in (mnt / "agent", mnt):  # a read-only bind over the root may still be there
        for _ in range(50):
            if _run("mountpoint", "-q", str(target)).returncode != 0:
                break
            if _run("umount", str(target)).returncode == 0:
                continue
            time.sleep(0.1)
        else:
            _run("umount", "-l", str(target))


def fill(path: Path) -> int:
    """Write until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                n = fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
            if not n:
                break
            written += n
    with open(path, "ab", buffering=0) as fh:  # the last partial page too
        while True:
            try:
                if not fh.write(b"\0" * 512):
                    break
            except OSError:
                break
    return written


def start(layout: Layout, env: dict[str, str], stderr: Path) -> subprocess.Popen:
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "run"], env=env,
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    wait_for(lambda: proc.poll() is not None or status_pid(layout) == proc.pid, what="daemon start")
    assert proc.poll() is None, stderr.read_text()
    return proc


def where(layout: Layout, ids: set[str], stderr: Path) -> str:
    """Where the ticks are (for a failure message)."""
    out = {f.value: len(set(folder_ids(layout, f)) & ids) for f in (Folder.INBOX, Folder.CLAIMED, Folder.DONE,
                                                                     Folder.DLQ)}
    reasons = [read_json(layout.folder(Folder.DLQ) / f"{i}.json").get("dlq_reason")
               for i in set(folder_ids(layout, Folder.DLQ)) & ids]
    return f"{out}; dlq reasons {reasons[:3]}; stderr tail: {stderr.read_text()[-1500:]}"


def check_histories(layout: Layout, ids: set[str], runs: Counter[str] | None = None) -> dict[str, Any]:
    """Every tick done exactly once, nothing elsewhere, and each history written once per event."""
    done = folder_ids(layout, Folder.DONE)
    assert sorted(done) == sorted(ids), "a tick is missing from done/, or is there twice"
    for folder in (Folder.INBOX, Folder.CLAIMED, Folder.DLQ):
        assert os.listdir(layout.folder(folder)) == [], f"{folder.value}/ is not empty"
    finals = {i: read_json(layout.folder(Folder.DONE) / f"{i}.json") for i in ids}
    for tick_id, data in finals.items():
        history = data["history"]
        entries = [json.dumps(h, sort_keys=True) for h in history]
        assert len(entries) == len(set(entries)), f"{tick_id}: a history entry was written twice: {history}"
        failed = [h for h in history if h["outcome"] == "failed"]
        # a done tick's attempts: its failures and the attempt that succeeded
        assert data["attempts"] == len(failed) + 1, f"{tick_id}: attempts {data['attempts']} but {len(failed)} failures"
        assert [h["attempt"] for h in failed] == list(range(1, len(failed) + 1)), history
        assert history[-1]["outcome"] in ("ok", "nothing_to_do"), history
        assert sum(1 for h in history if h["outcome"] == "ok") == 1, history
    return finals


def wait_all_done(layout: Layout, ids: set[str], stderr: Path) -> None:
    """Every tick reaches done/ (else fail saying where they are)."""
    wait_for(lambda: set(folder_ids(layout, Folder.DONE)) >= ids, timeout=30, what="every tick done",
             explain=lambda: where(layout, ids, stderr))


def survives_retries(proc: subprocess.Popen, stderr: Path, n: int = 3) -> None:
    """The daemon says "I/O error" on stderr `n` times (each a retry of its step on the broken disk), and lives."""
    wait_for(lambda: stderr.read_text().count("maestro: I/O error") >= n or proc.poll() is not None, timeout=20,
             what=f"{n} I/O errors on stderr")
    assert proc.poll() is None, stderr.read_text()


def judged(layout: Layout, ids: set[str], code: int, stderr: Path) -> tuple[dict[str, Any], list[str]]:
    """After the daemon's SIGTERM: a clean exit, no traceback, every history right; returns the final
    tick documents and the I/O error lines it printed."""
    text = stderr.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    finals = check_histories(layout, ids)
    return finals, [line for line in text.splitlines() if "maestro: I/O error" in line]


def workload(tmp_path: Path, layout: Layout, n_work: int, n_beat: int) -> tuple[list, list[Path]]:
    ticks = [new_tick("work", {"n": i, "do": "[[fake_claude:sleep:0.3]]"}) for i in range(n_work)]
    ticks += [new_tick("beat", {"n": i}) for i in range(n_beat)]
    return ticks, stage(ticks, layout.root.parent / "staging")


@pytest.mark.slow
def test_disk_full_under_a_running_daemon(tmp_path: Path, small_disk: Path) -> None:
    layout = write_agent(small_disk / "agent", REGISTRY, {"work": "Do the work."})
    env = daemon_env(tmp_path, **TORTURE_ENV, MAESTRO_MAX_LIVE_SUBSESSIONS=3, MAESTRO_POLL_MS=200,
                     MAESTRO_REAP_SECONDS=0.5, MAESTRO_MAX_ATTEMPTS=3, MAESTRO_CIRCUIT_THRESHOLD=1000)
    ticks, staged = workload(tmp_path, layout, 12, 30)
    early, late = staged[:8] + staged[12:32], staged[8:12] + staged[32:]
    publish(early, layout)
    proc = start(layout, env, tmp_path / "daemon.stderr")
    try:
        wait_for(lambda: len(runs_per_tick(tmp_path / "spawns.txt")) >= 3, what="sub-sessions running")
        filled = fill(small_disk / "filler")
        publish(late, layout)  # a rename needs no space: triggers can still deliver into the full disk
        survives_retries(proc, tmp_path / "daemon.stderr")  # several retries against the full disk
        os.unlink(small_disk / "filler")
        ids = {t.id for t in ticks}
        wait_all_done(layout, ids, tmp_path / "daemon.stderr")
        assert proc.poll() is None and status_pid(layout) == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finals, errors = judged(layout, ids, code, tmp_path / "daemon.stderr")
    runs = runs_per_tick(tmp_path / "spawns.txt")
    rows = ledger_rows(layout)  # a torn line fails here
    per_tick = Counter(r["tick"] for r in rows)
    for tick_id in runs:
        assert per_tick[tick_id] <= runs[tick_id], f"{tick_id}: more ledger rows than runs (counted twice)"
    failed_runs = sum(f["attempts"] - 1 for f in finals.values())  # done: every attempt but the one that succeeded
    assert failed_runs == 0, json.dumps([f["history"] for f in finals.values() if f["attempts"] != 1])
    print(f"disk full: filled {filled} bytes; {len(errors)} I/O errors on stderr, e.g. {errors[0]!r}; "
          f"{len(ids)} ticks done once; {sum(runs.values())} runs for {len(runs)} escalated ticks; "
          f"{failed_runs} attempts burnt by runs whose output hit the full disk; {len(rows)} ledger rows")


@pytest.mark.slow
def test_read_only_root_under_a_running_daemon(tmp_path: Path, small_disk: Path) -> None:
    layout = write_agent(small_disk / "agent", REGISTRY, {"work": "Do the work."})
    env = daemon_env(tmp_path, **TORTURE_ENV, MAESTRO_MAX_LIVE_SUBSESSIONS=3, MAESTRO_POLL_MS=200,
                     MAESTRO_REAP_SECONDS=0.5, MAESTRO_MAX_ATTEMPTS=3, MAESTRO_CIRCUIT_THRESHOLD=1000)
    ticks, staged = workload(tmp_path, layout, 12, 30)
    publish(staged, layout)
    proc = start(layout, env, tmp_path / "daemon.stderr")
    root = str(layout.root)
    try:
        wait_for(lambda: len(runs_per_tick(tmp_path / "spawns.txt")) >= 3, what="sub-sessions running")
        # A read-only bind over the root: `remount,ro` of the tmpfs itself is refused while files are open
        # for writing (the lock), which is exactly the daemon's situation.
        assert _run("mount", "--bind", root, root).returncode == 0
        ro = _run("mount", "-o", "remount,bind,ro", root)
        assert ro.returncode == 0, ro.stderr
        survives_retries(proc, tmp_path / "daemon.stderr")
        assert _run("umount", "-l", root).returncode == 0  # writable again
        ids = {t.id for t in ticks}
        wait_all_done(layout, ids, tmp_path / "daemon.stderr")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finals, errors = judged(layout, ids, code, tmp_path / "daemon.stderr")
    print(f"read-only: {len(errors)} I/O errors on stderr, e.g. {errors[0]!r}; {len(ids)} ticks done once; "
          f"{sum(f['attempts'] for f in finals.values())} attempts burnt")


# -- the same failure injected in-process (runs anywhere; pins the interleavings) ------------------------

INJECTED_REGISTRY = """
[defaults]
overlap = "allow"

[beat]
mode = "inline"
handler = "noop"
"""


class Disk:
    """ENOSPC at the bus seams (every tick content change is an `_append` to the file, or a `_publish` of a new
    one) and, with `ledger`, on the ledger too, while `full`. (On a real full disk a short ledger line often
    still fits in its file's last page.)"""

    def __init__(self, daemon: Daemon, *, ledger: bool) -> None:
        self.full = False
        self.refused = 0
        publish, append = daemon.bus._publish, daemon.ledger.append

        def guarded(real):
            def call(*args: Any, **kwargs: Any) -> Any:
                if self.full:
                    self.refused += 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(*args, **kwargs)
            return call

        daemon.bus._publish = guarded(publish)  # type: ignore[method-assign]
        daemon.bus._append = guarded(daemon.bus._append)  # type: ignore[method-assign]
        if ledger:
            daemon.ledger.append = guarded(append)  # type: ignore[method-assign]


def injected_world(layout: Layout, clock, ledger_full: bool, threshold: int) -> tuple[Daemon, Any, Disk]:
    write_agent(layout, INJECTED_REGISTRY, {"work": "Work."})
    spawner = FakeSpawner(default="hang")  # each sub-session ends when the test finishes it
    daemon = make_daemon(layout, clock, spawner, MAESTRO_MAX_LIVE_SUBSESSIONS=3, MAESTRO_MAX_ATTEMPTS=3,
                         MAESTRO_POLL_MS=1, MAESTRO_REAP_SECONDS=1, MAESTRO_CIRCUIT_THRESHOLD=threshold)
    daemon.guardrails.credentials_verified = True  # as after a first good run: up to the live cap at once
    return daemon, spawner, Disk(daemon, ledger=ledger_full)


def loop(daemon: Daemon, clock, n: int) -> None:
    """What `Daemon.run` does per iteration, with the clock moved on."""
    for _ in range(n):
        try:
            daemon.step()
        except OSError as exc:
            daemon._io_error(exc)
        clock.advance(1)


def where_each(layout: Layout) -> Counter[str]:
    seen: Counter[str] = Counter()
    for folder in (Folder.INBOX, Folder.CLAIMED, Folder.DONE, Folder.DLQ):
        seen.update(folder_ids(layout, folder))
    return seen


def full_disk_episode(layout: Layout, clock, ledger_full: bool,
                      threshold: int = 99) -> tuple[Daemon, Disk, dict[str, str], list[str]]:
    daemon, spawner, disk = injected_world(layout, clock, ledger_full, threshold)
    bus = daemon.bus
    work = [bus.enqueue("work", payload={"n": i}).id for i in range(3)]
    beats = [bus.enqueue("beat", payload={"n": i}).id for i in range(3)]
    loop(daemon, clock, 10)
    assert len(spawner.sessions) == 3 and set(beats) <= set(folder_ids(layout, Folder.DONE))

    disk.full = True
    for i in range(3, 5):  # delivered by rename while the disk is full (a trigger's `mv`)
        tick = new_tick("beat", {"n": i})
        path = layout.folder(Folder.TMP).parent / f"x-{tick.id}"
        path.write_bytes(tick.to_bytes())
        os.rename(path, layout.folder(Folder.INBOX) / tick.filename)
        beats.append(tick.id)
    ok, transient, permanent = spawner.sessions
    transient.finish("500")    # burns an attempt, retried
    permanent.finish("400")    # straight to dlq/
    ids = work + beats
    for _ in range(15):
        loop(daemon, clock, 1)
        seen = where_each(layout)
        assert all(seen[i] == 1 for i in ids), f"a tick is missing or in two places: {seen}"
    ok.finish("ok")
    for _ in range(5):
        loop(daemon, clock, 1)
    assert daemon.counters["io_errors"] >= 10 and disk.refused >= 10

    disk.full = False
    for _ in range(20):
        loop(daemon, clock, 1)
        for session in spawner.live():
            session.finish("ok")  # the retried run succeeds
    return daemon, disk, {"ok": work[0], "transient": work[1], "permanent": work[2]}, beats


@pytest.mark.parametrize("ledger_full", [True, False], ids=["ledger-full", "ledger-fits"])
def test_disk_full_injected(layout: Layout, clock, ledger_full: bool) -> None:
    daemon, disk, work, beats = full_disk_episode(layout, clock, ledger_full)
    assert sorted(folder_ids(layout, Folder.DONE)) == sorted([work["ok"], work["transient"], *beats])
    assert folder_ids(layout, Folder.DLQ) == [work["permanent"]]
    assert os.listdir(layout.folder(Folder.INBOX)) == [] and os.listdir(layout.folder(Folder.CLAIMED)) == []
    for folder, tick_id in [(Folder.DONE, i) for i in (work["ok"], work["transient"], *beats)] + \
                           [(Folder.DLQ, work["permanent"])]:
        data = read_json(layout.folder(folder) / f"{tick_id}.json")
        entries = [json.dumps(h, sort_keys=True) for h in data["history"]]
        assert len(entries) == len(set(entries)), f"{tick_id}: history written twice: {data['history']}"
        failed = [h for h in data["history"] if h["outcome"] == "failed"]
        assert data["attempts"] == len(failed) + (folder is Folder.DONE), (tick_id, data["history"])
    transient = read_json(layout.folder(Folder.DONE) / f"{work['transient']}.json")
    assert transient["attempts"] == 2  # one failed, then the one that succeeded
    assert [h["outcome"] for h in transient["history"]] == ["enqueued", "failed", "ok"]
    permanent = read_json(layout.folder(Folder.DLQ) / f"{work['permanent']}.json")
    assert permanent["attempts"] == 1 and "attempts exhausted" not in permanent["dlq_reason"]
    # The ledger has one row per sub-session: written once its disk came back, never twice.
    rows = ledger_rows(layout)
    assert Counter((r["tick"], r["attempt"]) for r in rows) == Counter(
        {(work["ok"], 1): 1, (work["transient"], 1): 1, (work["permanent"], 1): 1, (work["transient"], 2): 1})


def test_disk_full_injected_counts_each_failed_run_once(layout: Layout, clock) -> None:
    """With the default breaker threshold (3), two real failures must not open the circuit, however often
    the interrupted settle is retried (the policies' verdict is kept per tick until the move succeeds)."""
    daemon, disk, work, beats = full_disk_episode(layout, clock, ledger_full=False, threshold=3)
    opened = [e for e in events(layout, lenient=True) if e["stage"] in ("circuit_opened", "circuit_reopened")]
    assert opened == [], f"the breaker opened after 2 real failures: {opened}"
    assert daemon.counters["failed"] == 2, daemon.counters  # the 500 and the 400, each once


def test_disk_trouble_reads_a_full_and_a_read_only_disk(tmp_path: Path, small_disk: Path) -> None:
    from maestro_py.bus.fsio import disk_trouble

    assert disk_trouble(small_disk) is None
    fill(small_disk / "filler")
    assert disk_trouble(small_disk) == "its disk is full"
    os.unlink(small_disk / "filler")
    ro = small_disk / "ro"
    ro.mkdir()
    assert _run("mount", "--bind", str(ro), str(ro)).returncode == 0
    try:
        assert _run("mount", "-o", "remount,bind,ro", str(ro)).returncode == 0
        assert disk_trouble(ro) == "its filesystem is read-only"
    finally:
        _run("umount", str(ro))


def test_a_spawn_that_hits_a_full_disk_requeues_without_burning_an_attempt(layout: Layout, clock) -> None:
    from maestro_py.errors import SpawnError

    daemon, spawner, _ = injected_world(layout, clock, ledger_full=False, threshold=3)
    real_spawn = spawner.spawn
    full = {"on": True}

    def spawn(spec: Any) -> Any:  # what ProcessSpawner raises when a log cannot be created
        if full["on"]:
            raise SpawnError("cannot open sub-session log x: No space left on device") from OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_spawn(spec)

    spawner.spawn = spawn  # type: ignore[method-assign]
    tick = new_tick("work", {"n": 1})
    publish(stage([tick], layout.root.parent / "staging"), layout)
    loop(daemon, clock, 5)
    assert daemon.counters["io_errors"] >= 1 and daemon.counters["spawn_failures"] == 0
    data = read_json(layout.folder(Folder.INBOX) / f"{tick.id}.json")
    assert data["attempts"] == 0 and "disk trouble: attempt not counted" in data["history"][-1]["reason"]
    full["on"] = False
    loop(daemon, clock, 3)
    for session in spawner.live():
        session.finish("ok")
    loop(daemon, clock, 3)
    done = read_json(layout.folder(Folder.DONE) / f"{tick.id}.json")
    assert done["attempts"] == 1 and done["history"][-1]["outcome"] == "ok"  # the success, no burnt attempt
