"""`maestro logs`: filters, the last N events, raw JSON, monthly archives, and --follow across midnight."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.bus import logview
from maestro_py.bus.events import EventLog
from maestro_py.bus.logview import Event, Filter
from maestro_py.cli import cli
from maestro_py.paths import Layout
from tests.fakes import FakeClock, one_line_error


@pytest.fixture(autouse=True)
def _no_root_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAESTRO_AGENT_ROOT", raising=False)


def local(*args: int) -> datetime:
    """A local wall-clock time (daily log names use the local date)."""
    return datetime(*args).astimezone()


def write_events(layout: Layout, clock: FakeClock) -> None:
    log = EventLog(layout, clock=clock)
    log.emit("enqueued", id="t1", cadence="alpha", source="cron")
    clock.advance(1)
    log.emit("claimed", id="t1", cadence="alpha", attempt=1)
    clock.advance(1)
    log.emit("retry", level="warn", id="t1", cadence="alpha", reason="exit 1")
    clock.advance(86400)  # the next day: another file
    log.emit("enqueued", id="t2", cadence="beta")
    clock.advance(1)
    log.emit("dlq", level="error", id="t2", cadence="beta", reason="attempts exhausted")


def logs(layout: Layout, *args: str) -> list[str]:
    result = CliRunner().invoke(cli, ["--root", str(layout.root), "logs", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_readable_lines_across_daily_files(layout: Layout) -> None:
    write_events(layout, FakeClock(local(2026, 11, 20, 12, 0)))
    assert len(list(layout.events_dir.glob("bus-*.jsonl"))) == 2
    lines = logs(layout)
    assert [line.split()[2] for line in lines] == ["enqueued", "claimed", "retry", "enqueued", "dlq"]
    first = lines[0].split()
    assert first[1:] == ["info", "enqueued", "alpha", "t1", "source=cron"]
    assert lines[2].split()[1] == "warn" and 'reason="exit 1"' in lines[2]


def test_filters_and_last_n(layout: Layout) -> None:
    write_events(layout, FakeClock(local(2026, 11, 20, 12, 0)))
    assert [line.split()[2] for line in logs(layout, "--level", "warn")] == ["retry", "dlq"]
    assert [line.split()[2] for line in logs(layout, "--level", "error")] == ["dlq"]
    assert [line.split()[4] for line in logs(layout, "--cadence", "alpha")] == ["t1", "t1", "t1"]
    assert [line.split()[2] for line in logs(layout, "--id", "t2")] == ["enqueued", "dlq"]
    assert [line.split()[2] for line in logs(layout, "-n", "2")] == ["enqueued", "dlq"]
    assert [line.split()[2] for line in logs(layout, "-n", "2", "--cadence", "alpha")] == ["claimed", "retry"]
    assert logs(layout, "-n", "0") == []


def test_json_prints_the_raw_lines(layout: Layout) -> None:
    write_events(layout, FakeClock(local(2026, 11, 20, 12, 0)))
    raw = [line for p in sorted(layout.events_dir.glob("bus-*.jsonl")) for line in p.read_text().splitlines()]
    assert logs(layout, "--json") == raw
    assert [json.loads(line)["stage"] for line in logs(layout, "--json", "--level", "warn")] == ["retry", "dlq"]


def test_monthly_archive_comes_first_and_torn_lines_are_skipped(layout: Layout) -> None:
    layout.events_dir.mkdir(parents=True, exist_ok=True)
    (layout.events_dir / "bus-2026-10.jsonl").write_text(
        json.dumps({"ts": "2026-10-03T00:00:00.000Z", "level": "info", "stage": "archived"}) + "\n")
    (layout.events_dir / "bus-2026-11-01.jsonl").write_text(
        json.dumps({"ts": "2026-11-01T00:00:00.000Z", "level": "info", "stage": "daily"}) + "\n{\"ts\": \"2026-1")
    (layout.events_dir / "bus-2026-09-30.jsonl").write_text(
        json.dumps({"ts": "2026-09-30T00:00:00.000Z", "level": "info", "stage": "older"}) + "\n")
    (layout.events_dir / ".bus-2026-10.jsonl.abc.tmp").write_text("ignored\n")
    assert [p.name for p in logview.log_files(layout)] == ["bus-2026-09-30.jsonl", "bus-2026-10.jsonl",
                                                           "bus-2026-11-01.jsonl"]
    assert [line.split()[2] for line in logs(layout)] == ["older", "archived", "daily"]


# -- --since ------------------------------------------------------------------------------------------

def test_since_shows_the_events_from_then_on(layout: Layout) -> None:
    # Steps: events over the last days, then `maestro logs --since 2h`, a local ISO time, a date, and -n with it.
    now = datetime.now().astimezone()
    EventLog(layout, clock=FakeClock(now - timedelta(days=10))).emit("ten-days-ago")  # a file of its own
    clock = FakeClock(now - timedelta(hours=5))
    log = EventLog(layout, clock=clock)
    for stage, step in (("five-hours-ago", 2 * 3600), ("three-hours-ago", 2 * 3600), ("one-hour-ago", 50 * 60),
                        ("ten-minutes-ago", 0)):
        log.emit(stage, cadence="alpha")
        clock.advance(step)
    for _ in range(60):
        log.emit("filler", cadence="beta")  # more than the default 50 since then: --since shows them all
    stages = lambda *args: [line.split()[2] for line in logs(layout, *args)]  # noqa: E731
    assert stages("--since", "2h", "--cadence", "alpha") == ["one-hour-ago", "ten-minutes-ago"]
    assert len(stages("--since", "2h")) == 62
    four_hours_ago = (now - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M")  # no zone: the local time
    assert stages("--since", four_hours_ago, "--cadence", "alpha") == ["three-hours-ago", "one-hour-ago",
                                                                        "ten-minutes-ago"]
    five_days_ago = (now - timedelta(days=5)).date().isoformat()
    assert stages("--since", five_days_ago, "--cadence", "alpha") == ["five-hours-ago", "three-hours-ago",
                                                                       "one-hour-ago", "ten-minutes-ago"]
    assert stages("--since", "2w")[0] == "ten-days-ago"
    assert stages("--since", "2h", "-n", "1", "--cadence", "alpha") == ["ten-minutes-ago"]
    assert [json.loads(line)["stage"] for line in logs(layout, "--since", "2h", "--json", "--cadence", "alpha")] \
        == ["one-hour-ago", "ten-minutes-ago"]


@pytest.mark.parametrize("value", ["yesterday", "2 hours", "-3h", "2026-13-01", ""])
def test_a_bad_since_is_one_line_and_exit_2(layout: Layout, value: str) -> None:
    result = CliRunner().invoke(cli, ["--root", str(layout.root), "logs", "--since", value])
    assert result.exit_code == 2 and result.stdout == ""
    assert one_line_error(result).startswith("maestro: --since: ") and "is not a span" in result.stderr


def test_since_leaves_older_files_unread(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now().astimezone()
    for days in (30, 20, 0):
        EventLog(layout, clock=FakeClock(now - timedelta(days=days))).emit(f"{days}-days-ago")
    opened: list[str] = []
    real_open = open

    def spy(path: object, *args: object, **kwargs: object) -> object:
        opened.append(Path(str(path)).name)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy)
    assert [e.data["stage"] for e in logview.last(layout, Filter(since=now - timedelta(days=25)), None)] \
        == ["20-days-ago", "0-days-ago"]
    assert opened == [layout.event_log(now).name, layout.event_log(now - timedelta(days=20)).name]


def test_no_log_yet_prints_nothing(tmp_path: Path) -> None:
    (tmp_path / "cadences").mkdir()  # an agent root, with no log yet
    assert logs(Layout(tmp_path)) == []


def test_long_values_are_cut_and_odd_values_quoted() -> None:
    event = Event("", {"ts": "T", "level": "error", "stage": "failed", "id": None, "cadence": "c",
                       "stderr_tail": "x" * 1000, "note": "two words", "n": 3, "empty": None,
                       "doc": {"a": [1, 2]}})
    line = logview.format_event(event)
    assert line.startswith("T error failed c - ")
    tail = line.split("stderr_tail=")[1].split(" ")[0]
    assert len(tail) == logview.VALUE_WIDTH and tail.endswith("…")
    assert 'note="two words"' in line and "n=3" in line and "empty" not in line and 'doc={"a": [1, 2]}' in line


def test_level_rank() -> None:
    assert logview.rank("info") < logview.rank("warn") < logview.rank("error")
    assert logview.rank("mystery") == logview.rank("info")
    assert Filter(level="warn").matches({"level": "error"}) and not Filter(level="warn").matches({"level": "info"})


# -- follow -----------------------------------------------------------------------------------------

def test_follow_keeps_going_across_midnight(layout: Layout) -> None:
    clock = FakeClock(local(2026, 11, 23, 23, 59, 58))
    log = EventLog(layout, clock=clock)
    log.emit("old", id="a")
    log.emit("before", id="b")
    day1 = layout.event_log(clock.now().astimezone())
    seen: list[str] = []
    sleeps = 0

    def sleep(seconds: float) -> None:
        nonlocal sleeps
        assert seconds == logview.POLL_SECONDS
        sleeps += 1
        clock.advance(seconds)
        if sleeps == 2:
            log.emit("late-day1", id="c")
        if sleeps == 3:
            with open(day1, "a") as fh:  # half a line: shown only once it is complete
                fh.write('{"ts": "x", "level": "info", "stage": "par')
        if sleeps == 4:
            with open(day1, "a") as fh:
                fh.write('tial"}\n')
        if sleeps == 15:  # past midnight: the writer now uses the next day's file
            assert clock.now().astimezone().day == 24
            log.emit("next-day", id="d", cadence="x")
        if sleeps == 16:  # a writer that read the clock before midnight still appends to yesterday's file
            with open(day1, "a") as fh:
                fh.write(json.dumps({"ts": "y", "level": "warn", "stage": "straggler"}) + "\n")

    logview.follow(layout, Filter(), lambda e: seen.append(e.data["stage"]), n=1, clock=clock,
                   sleep=sleep, stop=lambda: sleeps >= 20)
    assert seen == ["before", "late-day1", "partial", "next-day", "straggler"]
    assert layout.event_log(clock.now().astimezone()) != day1 and layout.event_log(clock.now().astimezone()).exists()


def test_follow_filters_and_drops_yesterday_after_a_day(layout: Layout) -> None:
    clock = FakeClock(local(2026, 11, 23, 12, 0))
    log = EventLog(layout, clock=clock)
    seen: list[str] = []
    calls = 0

    def sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            log.emit("info-event")
            log.emit("warn-event", level="warn")
        if calls == 2:
            clock.advance(2 * 86400)  # two days on: the first file is no longer followed
            log.emit("error-event", level="error")

    logview.follow(layout, Filter(level="warn"), lambda e: seen.append(e.data["stage"]), n=5, clock=clock,
                   sleep=sleep, stop=lambda: calls >= 3)
    assert seen == ["warn-event", "error-event"]


def test_follow_starts_after_the_backlog_without_repeating_it(layout: Layout) -> None:
    clock = FakeClock(local(2026, 11, 23, 12, 0))
    log = EventLog(layout, clock=clock)
    for i in range(5):
        log.emit(f"e{i}")
    seen: list[str] = []
    logview.follow(layout, Filter(), lambda e: seen.append(e.data["stage"]), n=2, clock=clock,
                   sleep=lambda s: None, stop=lambda: True)
    assert seen == ["e3", "e4"]


def test_follow_survives_the_file_being_replaced(layout: Layout) -> None:
    clock = FakeClock(local(2026, 11, 23, 12, 0))
    log = EventLog(layout, clock=clock)
    log.emit("first")
    path = layout.event_log(clock.now().astimezone())
    seen: list[str] = []
    calls = 0

    def sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            tmp = path.with_suffix(".new")
            tmp.write_text(json.dumps({"ts": "z", "level": "info", "stage": "rewritten"}) + "\n")
            os.replace(tmp, path)

    logview.follow(layout, Filter(), lambda e: seen.append(e.data["stage"]), n=0, clock=clock,
                   sleep=sleep, stop=lambda: calls >= 2)
    assert seen == ["rewritten"]


def test_last_reads_only_what_it_needs(layout: Layout) -> None:
    clock = FakeClock(local(2026, 11, 20, 12, 0))
    log = EventLog(layout, clock=clock)
    log.emit("day1")
    clock.advance(86400)
    log.emit("day2-a")
    log.emit("day2-b")
    assert [e.data["stage"] for e in logview.last(layout, Filter(), 2)] == ["day2-a", "day2-b"]
    assert [e.data["stage"] for e in logview.last(layout, Filter(), 3)] == ["day1", "day2-a", "day2-b"]
    day2 = layout.event_log(clock.now().astimezone())
    first_line = len(day2.read_bytes().splitlines(keepends=True)[0])
    capped = logview.last(layout, Filter(), 5, upto={day2: first_line})
    assert [e.data["stage"] for e in capped] == ["day1", "day2-a"]
