"""Every operator move is safe at every step: the process making it dies at each file-system call in turn (a kill -9
of `maestro tick retry-now`, `circuit reset`, `tick cancel`, `dlq replay`, and a compaction), a daemon then runs on
the root, and each tick id ends in exactly one folder and runs at most once.

The dying process is simulated in-process: from its Nth call on, every file-system call raises `Died` (a
BaseException, so no `except OSError` clean-up of the move runs either), and its claims carry the token of a process
that is not running (the reaper sees its owner gone, as after a real kill).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from maestro_py.bus.owner import Owner
from maestro_py.bus.store import Bus
from maestro_py.paths import Folder, Layout
from tests.fakes import FakeClock, FakeSpawner, enqueue, fail, ledger_rows, make_daemon, run_steps, write_agent

DEAD = Owner(999_999, 1)  # the operator's process, killed mid-move
CALLS = ("rename", "replace", "link", "unlink", "fsync", "write", "open")


class Died(BaseException):
    """The process making the move was killed here."""


@contextmanager
def dies_at(n: int | None) -> Iterator[list[str]]:
    """Every os call of CALLS counted; from the `n`th on (0-based) each raises Died. None: count only."""
    made: list[str] = []
    saved = {name: getattr(os, name) for name in CALLS}

    def wrap(name: str) -> Callable[..., object]:
        real = saved[name]

        def call(*args: object, **kwargs: object) -> object:
            if n is not None and len(made) >= n:
                raise Died(name)
            made.append(name)
            return real(*args, **kwargs)
        return call

    for name in CALLS:
        setattr(os, name, wrap(name))
    try:
        yield made
    finally:
        for name, real in saved.items():
            setattr(os, name, real)


def _failed(layout: Layout, clock: FakeClock, *, permanent: bool) -> str:
    """A tick that failed once: queued for a retry time (what retry-now and circuit reset release), or, if
    `permanent`, dead-lettered (what dlq replay brings back)."""
    [tick] = enqueue(layout, clock, "memo")
    bus = Bus(layout, clock=clock, owner=DEAD)
    bus.index.refresh(force=True)
    claim = bus.claim(f"{tick}.json")
    assert claim is not None
    fail(bus, claim, "400 bad request" if permanent else "API Error: 500", max_attempts=5, permanent=permanent,
         retry_at=None if permanent else clock.now() + timedelta(hours=1))
    return tick


def _waiting(layout: Layout, clock: FakeClock) -> str:
    return _failed(layout, clock, permanent=False)


def _dead_letter(layout: Layout, clock: FakeClock) -> str:
    return _failed(layout, clock, permanent=True)


MOVES: dict[str, tuple[Callable[[Layout, FakeClock], str], Callable[[Bus, str], object]]] = {
    "retry-now (release)": (_waiting, lambda bus, tick: bus.release(tick, reason="retry-now by operator")),
    "cancel": (_waiting, lambda bus, tick: bus.cancel(tick, reason="not needed")),
    "dlq replay": (_dead_letter, lambda bus, tick: bus.replay(tick)),
}


def _places(layout: Layout, tick: str) -> list[str]:
    out = []
    for folder in (Folder.INBOX, Folder.CLAIMED, Folder.DONE, Folder.DLQ):
        out += [folder.value for name in os.listdir(layout.folder(folder)) if name.startswith(tick)]
    return out


def _run(tmp: Path, move: str, n: int | None) -> tuple[list[str], int, int, list[str]]:
    """Make `move` die at call `n` (None: no fault) while a daemon runs on the root, its runs slow enough that the
    reaper looks while one is live. (places, runs, ledger rows, calls made)."""
    layout = write_agent(tmp, "[memo]\nmax_attempts = 5\n", {"memo": "Write the memo. [[fake:hang]]"})
    clock = FakeClock()
    prepare, act = MOVES[move]
    tick = prepare(layout, clock)
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    daemon.guardrails.credentials_verified = True
    run_steps(daemon, 3)  # its start-up reap is behind it
    with dies_at(n) as made:
        try:
            act(Bus(layout, clock=clock, owner=DEAD), tick)
        except Died:
            pass
    for _ in range(6):  # it claims what the move published, the reaper looks at the dead hold, then the runs end
        run_steps(daemon, 5)
        clock.advance(30)
        if _ >= 3:
            for session in spawner.live():
                session.finish("ok")
    runs = sum(1 for s in spawner.sessions if tick.encode() in s.spec.stdin)
    return _places(layout, tick), runs, sum(1 for r in ledger_rows(layout) if r["tick"] == tick), made


@pytest.mark.parametrize("move", list(MOVES))
def test_a_move_killed_at_any_file_system_call_leaves_the_tick_in_one_place_run_at_most_once(tmp_path: Path,
                                                                                             move: str) -> None:
    places, runs, rows, calls = _run(tmp_path / "clean", move, None)
    assert len(places) == 1 and runs <= 1 and rows == runs, (places, runs, rows)
    assert len(calls) >= 3, calls
    for n in range(len(calls)):
        places, runs, rows, _ = _run(tmp_path / f"at-{n}", move, n)
        assert len(places) == 1, f"{move} killed at call {n} ({calls[n]}): the tick is in {places}"
        assert runs <= 1 and rows == runs, f"{move} killed at call {n} ({calls[n]}): {runs} runs, {rows} rows"
