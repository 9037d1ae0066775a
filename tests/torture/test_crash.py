"""Crash torture: SIGKILL a real daemon again and again mid-work; nothing is lost, nothing runs twice
except what was running at a kill.

Each daemon life is a separate process running `maestro --root DIR run` (forked from a pre-imported
launcher, see zygote.py; MAESTRO_TORTURE_EXEC=1 makes every life a cold `python -m maestro_py`).
Sizes follow MAESTRO_TORTURE_SCALE: 0.3 by default (300 ticks, 60 kills), 1 in .ci/run (1,000 ticks,
200 kills), 10 for the long variant by hand (10,000 ticks, 2,000 kills);
MAESTRO_TORTURE_SEED replays one run's random choices.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from maestro_py.paths import Folder
from tests.fakes import daemon_env, events, read_json, wait_for, write_agent
from tests.torture.support import (
    SCALE, TORTURE_ENV, Launcher, folder_ids, new_tick, publish, quarantined, runs_per_tick, seeded_random, stage,
    status_pid,
)

MAX_LIVE = 4
REGISTRY = """
[defaults]
overlap = "allow"
timeout_seconds = 120

[beat]
mode = "inline"
handler = "noop"

[work]
overlap = "allow"
"""

POISON_REGISTRY = """
[poison]
mode = "inline"
handler = "poison:die"

[beat]
mode = "inline"
handler = "noop"
"""

POISON_HELPER = '''
import os

def die(tick):
    with open(os.environ["POISON_LOG"], "a") as fh:
        fh.write(tick["id"] + "\\n")
    os._exit(9)  # a handler that takes the whole daemon down (segfault, OOM kill, os._exit in a library)
'''


@pytest.fixture
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


def test_sigkill_torture_loses_nothing_and_reruns_only_what_was_running(tmp_path: Path, launcher: Launcher) -> None:
    n_ticks, n_kills = int(1000 * SCALE), int(200 * SCALE)
    rng, seed = seeded_random("crash torture")
    layout = write_agent(tmp_path / "agent", REGISTRY, {"work": "Do the work."})
    env = daemon_env(tmp_path, **TORTURE_ENV, MAESTRO_MAX_LIVE_SUBSESSIONS=MAX_LIVE, MAESTRO_REAP_SECONDS="0.2",
                     MAESTRO_TMP_GRACE_SECONDS="0", MAESTRO_POLL_MS="100")
    ticks = []
    for i in range(n_ticks):
        if rng.random() < 0.3:
            # A few ms of "work" picked per tick: the directive rides in the payload of the prompt's JSON block.
            ticks.append(new_tick("work", {"n": i, "do": f"[[fake_claude:sleep:{rng.uniform(0.0, 0.01):.4f}]]"}))
        else:
            ticks.append(new_tick("beat", {"n": i}))
    escalated = {t.id for t in ticks if t.cadence == "work"}
    staged = stage(ticks, tmp_path / "staging")
    batches = [staged[i * n_ticks // (n_kills + 1):(i + 1) * n_ticks // (n_kills + 1)] for i in range(n_kills + 1)]
    logs = tmp_path / "lives"
    logs.mkdir()
    started = time.monotonic()

    kills = lives = 0
    while kills < n_kills:
        stderr = logs / f"{lives:05d}.stderr"
        lives += 1
        pid = launcher.start(layout, env, stderr)
        publish(batches[kills], layout)  # new ticks arrive while the daemon starts, claims, runs
        batches[kills] = []
        if rng.random() < 0.5:  # half the kills land in start-up, half once the loop is turning
            wait_for(lambda: status_pid(layout) == pid or launcher.wait(pid, 0) is not None, timeout=20,
                     what=f"life {lives} to start", interval=0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it exited by itself (and was reaped): judged below
        code = launcher.wait(pid, 10)
        # Anything but our SIGKILL fails: a crash, or a restart refused because the dead life's lock was
        # still held (by its sub-session child between fork and exec, for a few ms).
        assert code == -signal.SIGKILL, f"life {lives} (pid {pid}) ended by itself ({code}): {stderr.read_text()}"
        kills += 1
    torture_s = time.monotonic() - started

    publish(batches[n_kills], layout)
    final = launcher.start(layout, env, logs / "final.stderr")
    everything = {t.id for t in ticks}

    def settled() -> bool:
        return (not os.listdir(layout.folder(Folder.INBOX)) and not os.listdir(layout.folder(Folder.CLAIMED))
                and set(folder_ids(layout, Folder.DONE)) | set(folder_ids(layout, Folder.DLQ)) >= everything)

    wait_for(settled, timeout=120 * SCALE, what="the final daemon to drain every tick", interval=0.1)
    os.kill(final, signal.SIGTERM)
    assert launcher.wait(final, 30) == 0, (logs / "final.stderr").read_text()
    assert launcher.settle_children() == [], "orphaned sub-sessions still running"
    total_s = time.monotonic() - started

    # Every tick is in exactly one final folder; nothing is left in flight; nothing was quarantined.
    done, dlq = folder_ids(layout, Folder.DONE), folder_ids(layout, Folder.DLQ)
    assert len(done) == len(set(done)) and len(dlq) == len(set(dlq))
    assert not set(done) & set(dlq), "a tick is in done/ and dlq/"
    assert set(done) | set(dlq) == everything, "ticks lost or invented"
    assert quarantined(layout) == {}, "a crash left a half-written tick that had to be quarantined"
    for folder in (Folder.INBOX, Folder.CLAIMED, Folder.TMP):
        assert os.listdir(layout.folder(folder)) == [], f"{folder.value}/ is not empty"

    # Dead letters only come from the crash loop guard (owner died MAESTRO_MAX_REAPS times).
    for tick_id in dlq:
        data = read_json(layout.folder(Folder.DLQ) / f"{tick_id}.json")
        assert "its owner died" in data["dlq_reason"], data["dlq_reason"]
    # Nothing failed: every settled run succeeded, so no attempt was burnt (a done tick counts its one success).
    finals = {i: read_json(layout.folder(Folder.DONE) / f"{i}.json") for i in done}
    finals.update({i: read_json(layout.folder(Folder.DLQ) / f"{i}.json") for i in dlq})
    for tick_id, data in finals.items():
        assert data["attempts"] == (1 if tick_id in done else 0), (tick_id, data["history"])
        if tick_id in done:
            assert data["history"][-1]["outcome"] == "ok"
            assert data["history"][-1]["mode"] == ("escalate" if tick_id in escalated else "inline")

    # Runs per tick: a tick runs again only after its daemon died holding it (its `reaps` count says so).
    runs = runs_per_tick(tmp_path / "spawns.txt")
    assert set(runs) <= escalated, "an inline tick reached claude"
    for tick_id in escalated & set(done):
        assert runs[tick_id] >= 1, f"{tick_id} is done but never ran"
    for tick_id, count in runs.items():
        assert count <= finals[tick_id].get("reaps", 0) + 1, (tick_id, count, finals[tick_id]["history"])
    duplicates = sum(count - 1 for count in runs.values() if count > 1)
    assert duplicates <= n_kills * MAX_LIVE

    lives = [e for e in events(layout, lenient=True) if e["stage"] == "daemon_started"]
    reaped = sum(1 for e in events(layout, lenient=True) if e["stage"] == "reaped")
    print(f"crash torture (seed {seed}): {n_ticks} ticks ({len(escalated)} escalated, {len(runs)} ran), "
          f"{n_kills} SIGKILLs ({len(lives) - 1} after start-up), {reaped} claims reaped, "
          f"{duplicates} duplicate runs over {sum(1 for c in runs.values() if c > 1)} ticks, "
          f"{len(dlq)} dead-lettered by the crash-loop guard; kills {torture_s:.1f}s, total {total_s:.1f}s")
    for stderr in logs.iterdir():
        assert "Traceback" not in stderr.read_text(errors="replace"), stderr.read_text(errors="replace")


def test_poison_tick_that_kills_the_daemon_is_dead_lettered_not_crash_looped(tmp_path: Path,
                                                                             launcher: Launcher) -> None:
    layout = write_agent(tmp_path / "agent", POISON_REGISTRY, files={"poison.py": POISON_HELPER})
    poison_log = tmp_path / "poison.log"
    env = daemon_env(tmp_path, **TORTURE_ENV, MAESTRO_MAX_REAPS="3", MAESTRO_REAP_SECONDS="0.2",
                     POISON_LOG=poison_log)
    before = [new_tick("beat", {"n": i}) for i in range(3)]
    poison = new_tick("poison")
    after = [new_tick("beat", {"n": i}) for i in range(3, 6)]
    publish(stage(before + [poison] + after, tmp_path / "staging"), layout)

    crashes = 0
    while True:  # a supervisor (systemd Restart=always) restarting the daemon after each crash
        stderr = tmp_path / f"life-{crashes}.stderr"
        pid = launcher.start(layout, env, stderr)
        wait_for(lambda: launcher.wait(pid, 0) is not None or poison.id in folder_ids(layout, Folder.DLQ),
                 timeout=20, what="a crash or the poison tick dead-lettered")
        code = launcher.wait(pid, 0.5)
        if code is None:
            break
        assert code == 9, stderr.read_text()
        crashes += 1
        assert crashes <= 3, "crash loop: the poison tick was not dead-lettered"
    try:
        assert crashes == 3
        assert poison_log.read_text().split() == [poison.id] * 3  # it ran (and killed) exactly 3 times
        wait_for(lambda: sorted(folder_ids(layout, Folder.DONE)) == sorted(t.id for t in before + after),
                 what="the good ticks around it")
        dead = read_json(layout.folder(Folder.DLQ) / f"{poison.id}.json")
        assert "its owner died 3 times" in dead["dlq_reason"]
        assert [h["outcome"] for h in dead["history"]].count("reaped") == 2
        assert launcher.wait(pid, 0.5) is None, "the daemon must keep running"
    finally:
        os.kill(pid, signal.SIGTERM)
    assert launcher.wait(pid, 20) == 0
