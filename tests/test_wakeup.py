"""The loop's wake-up: inotify read on the loop's own thread (Linux), the pipe, and the poll fallback."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maestro_py.daemon.wakeup import Wakeup

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux-only")


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    bus = tmp_path / "bus"
    (bus / "inbox").mkdir(parents=True)
    (bus / "tmp").mkdir()
    return bus / "inbox", bus


@pytest.fixture
def wakeup(folders: tuple[Path, Path]) -> Iterator[Wakeup]:
    w = Wakeup(*folders)
    assert w.start()
    yield w
    w.close()


def _publish(folders: tuple[Path, Path], name: str) -> None:
    inbox, bus = folders
    tmp = bus / "tmp" / f"{name}.tmp"
    tmp.write_text("{}")
    os.link(tmp, inbox / name)  # as Bus.deliver publishes
    os.unlink(tmp)


@linux
def test_inotify_runs_on_the_loops_thread_without_watchdog_threads(folders) -> None:
    before = threading.active_count()
    w = Wakeup(*folders)
    try:
        assert w.start() and w.mechanism == "inotify"
        assert threading.active_count() == before  # no observer, emitter or reader thread
    finally:
        w.close()


@linux
def test_a_tick_linked_into_the_inbox_wakes_the_wait_and_is_named(folders, wakeup: Wakeup) -> None:
    def later() -> None:
        time.sleep(0.2)
        _publish(folders, "t1.json")

    threading.Thread(target=later).start()
    start = time.monotonic()
    assert wakeup.wait(10.0) is True
    assert time.monotonic() - start < 5
    assert wakeup.drain_names() == ["t1.json"]


def test_names_arrive_without_a_wait_while_the_loop_is_busy(folders, wakeup: Wakeup) -> None:
    inbox, bus = folders
    _publish(folders, "a.json")
    os.replace(_tmp_file(bus, "b"), inbox / "b.json")  # a requeue: rename over
    (inbox / "c.json").write_text("{}")  # a hand-written file: create, then close-after-write
    deadline = time.monotonic() + 5
    seen: list[str] = []
    while time.monotonic() < deadline and not {"a.json", "b.json", "c.json"} <= set(seen):
        seen += wakeup.drain_names()
        time.sleep(0.01)
    assert {"a.json", "b.json", "c.json"} <= set(seen)


@linux
def test_status_rewrites_in_the_bus_folder_do_not_wake_the_loop(folders, wakeup: Wakeup) -> None:
    inbox, bus = folders
    for _ in range(5):
        os.replace(_tmp_file(bus, "status"), bus / "consumer.json")
        (bus / "consumer.json").read_text()
        (inbox / "x.json").exists()
    assert wakeup.wait(0.3) is False


def test_a_stop_file_wakes_the_loop(folders, wakeup: Wakeup) -> None:
    _, bus = folders
    threading.Timer(0.2, lambda: (bus / "STOP").write_text("halt")).start()
    assert wakeup.wait(10.0) is True


def test_set_wakes_and_poll_mode_times_out(folders) -> None:
    w = Wakeup(*folders, watch=False)
    try:
        assert w.start() is False and w.mechanism == "poll"
        start = time.monotonic()
        assert w.wait(0.2) is False
        assert time.monotonic() - start >= 0.19
        w.set()
        assert w.wait(10.0) is True
        _publish(folders, "t.json")
        assert w.drain_names() == []  # polling: the index rescans instead
    finally:
        w.close()


def _tmp_file(bus: Path, stem: str) -> Path:
    path = bus / "tmp" / f"{stem}.tmp"
    path.write_text("{}")
    return path


@linux
def test_an_inbox_replaced_under_the_daemon_is_watched_again(folders, wakeup: Wakeup) -> None:
    inbox, bus = folders
    os.rename(inbox, bus / "old-inbox")  # an operator moves the folder away and makes a new one
    inbox.mkdir()
    assert wakeup.wait(5.0) is True  # the old watch ending wakes the loop...
    wakeup.drain_names()
    assert wakeup.overflowed  # ...which is told to rescan
    (bus / "old-inbox" / "stale.json").write_text("{}")  # the moved folder is no longer watched
    _publish(folders, "fresh.json")
    deadline, seen = time.monotonic() + 5, []
    while time.monotonic() < deadline and "fresh.json" not in seen:
        wakeup.wait(0.5)
        seen += wakeup.drain_names()
    assert "fresh.json" in seen and "stale.json" not in seen
