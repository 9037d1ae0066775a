"""Racing consumers: two daemons on one root never both run; two bus consumers never claim a tick twice.

Both racers of a round import everything, say `ready`, and start together on one `go` line on their stdin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from maestro_py.paths import Folder
from tests.fakes import REPO, daemon_env, events, tick_ids, wait_for, write_agent
from tests.torture.support import SCALE, TORTURE_ENV, folder_ids, new_tick, publish, stage

# Imports done, then both processes wait for the same `go` and call the real CLI.
AT_THE_SAME_MOMENT = textwrap.dedent(
    """
    import sys
    import maestro_py.cli, maestro_py.daemon.loop
    print("ready", flush=True)
    sys.stdin.readline()
    maestro_py.cli.cli.main(args=sys.argv[1:], prog_name="maestro")
    """
)


def start_together(procs: list[subprocess.Popen]) -> None:
    """Wait until every racer is `ready`, then send each its `go`."""
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def test_two_daemons_started_at_the_same_moment_exactly_one_runs(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", '[beat]\nmode = "inline"\nhandler = "noop"\n')
    env = daemon_env(tmp_path, **TORTURE_ENV)
    rounds = max(2, round(6 * SCALE))
    for round_ in range(rounds):
        procs = [subprocess.Popen([sys.executable, "-c", AT_THE_SAME_MOMENT, "--root", str(layout.root), "run"],
                                  env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        try:
            start_together(procs)
            wait_for(lambda: any(p.poll() is not None for p in procs), timeout=20, what="one daemon to refuse")
            losers = [p for p in procs if p.poll() is not None]
            assert len(losers) == 1, f"round {round_}: both exited: {[p.communicate() for p in procs]}"
            loser = losers[0]
            (winner,) = [p for p in procs if p is not loser]
            err = loser.stderr.read()
            assert loser.returncode == 1, err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("maestro: another maestro daemon"), err
            # It names the live owner (read from the lock file, which the winner writes just after its flock).
            assert f"(pid {winner.pid})" in lines[0], f"round {round_}: the refusal does not name the owner: {err}"
            # The winner keeps running: it settles a tick delivered after the loser left.
            beat = new_tick("beat", {"round": round_})
            publish(stage([beat], tmp_path / "staging"), layout)
            wait_for(lambda: beat.id in tick_ids(layout, Folder.DONE), what="the winner to settle a tick")
            assert winner.poll() is None, "the winner must keep running"
            wait_for(lambda: json.loads(layout.consumer_file.read_text()).get("pid") == winner.pid,
                     what="the winner's status")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=20)
                for pipe in (p.stdin, p.stdout, p.stderr):
                    pipe.close()
        assert winner.returncode == 0
    started = [e["pid"] for e in events(layout, lenient=True) if e["stage"] == "daemon_started"]
    assert len(started) == rounds, "only the winner of each round may start"


RACER = textwrap.dedent(
    """
    import json, os, sys, time
    from maestro_py.bus.store import Bus
    from maestro_py.paths import Layout
    bus = Bus(Layout(sys.argv[1]))
    index = bus.index
    index.refresh(force=True)  # reads every file once (10k), before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    got, lost = [], 0
    while True:
        index.promote(bus.clock.now())
        heads = list(index.heads())
        if not heads:
            index.refresh(force=True)
            index.promote(bus.clock.now())
            if not list(index.heads()):
                break
            continue
        for head in heads:  # both racers walk the same FIFO order: every claim is contested
            claim = bus.claim(head.name)
            if claim is None:
                lost += 1
            else:
                got.append(claim.tick.id)
    print(json.dumps({"got": got, "lost": lost, "owner": bus.owner.token}))
    """
)


def test_two_consumers_racing_for_every_tick_never_claim_one_twice(tmp_path: Path) -> None:
    n = int(10_000 * SCALE)
    layout = write_agent(tmp_path / "agent", "")
    inbox = layout.folder(Folder.INBOX)
    ids = set()
    for i in range(n):
        tick = new_tick(f"c{i % 8}", {"n": i})
        (inbox / tick.filename).write_bytes(tick.to_bytes())
        ids.add(tick.id)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(layout.root)], env=env, cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    start_together(procs)
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    a, b = (set(o["got"]) for o in outs)
    assert len(a) == len(outs[0]["got"]) and len(b) == len(outs[1]["got"])
    assert not a & b, f"{len(a & b)} ticks claimed by both consumers"
    assert a | b == ids, f"{len(ids - (a | b))} ticks claimed by neither"
    assert a and b, "both consumers should have won claims"
    assert os.listdir(inbox) == []
    # The bus agrees: one claimed file per tick, named with the owner that reported it.
    owners = {o["owner"]: set(o["got"]) for o in outs}
    claimed = os.listdir(layout.folder(Folder.CLAIMED))
    assert len(claimed) == n
    for name in claimed:
        tick_id, owner = name[:-5].split("@")
        assert tick_id in owners[owner]
    assert Counter(folder_ids(layout, Folder.CLAIMED)) == Counter(ids)
    claimed_events = Counter(e["id"] for e in events(layout, lenient=True) if e["stage"] == "claimed")
    assert set(claimed_events.values()) == {1} and set(claimed_events) == ids
    print(f"racing consumers: {n} ticks, {len(a)} + {len(b)} claims, "
          f"{outs[0]['lost'] + outs[1]['lost']} lost races, 0 double claims")
