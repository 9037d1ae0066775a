"""Retention: pruning by age and size (never live or fresh files), monthly rotation of events and ledger."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.daemon import retention
from maestro_py.cli import cli
from maestro_py.errors import ConfigError
from maestro_py.bus.fsio import atomic_write_json
from maestro_py.session.ledger import Ledger
from maestro_py.paths import Folder, Layout
from maestro_py.config import Settings
from maestro_py.daemon.retention import PruneReport
from tests.fakes import wait_for

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=timezone.utc)  # mid-month: the same month in every time zone
DAY = 86400.0


@pytest.fixture(autouse=True)
def _no_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAESTRO_AGENT_ROOT", "MAESTRO_RETENTION_DAYS", "MAESTRO_LOGS_MAX_MB"):
        monkeypatch.delenv(name, raising=False)


def put(path: Path, data: int | str, age_s: float, now: datetime = NOW) -> Path:
    """A file (of `data` bytes, or holding `data`) last modified `age_s` seconds before `now`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * data if isinstance(data, int) else data.encode())
    t = now.timestamp() - age_s
    os.utime(path, (t, t))
    return path


def run_logs(layout: Layout, name: str, size: int, age_s: float, now: datetime = NOW) -> list[Path]:
    return [put(layout.subsessions_dir / f"{name}.{s}.log", size, age_s, now) for s in ("stdout", "stderr")]


def prune(layout: Layout, *, days: float = 14, mb: float = 500, protect: set[Path] | None = None,
          dry_run: bool = False, now: datetime = NOW) -> PruneReport:
    return retention.prune(layout, now=now, retention_days=days, max_mb=mb, protect=protect or set(),
                           dry_run=dry_run)


def removed(report: PruneReport) -> set[str]:
    return {r.path.name for r in report.removed}


# -- age and size -----------------------------------------------------------------------------------

def test_old_done_ticks_and_run_logs_go_recent_ones_stay(layout: Layout) -> None:
    done = layout.folder(Folder.DONE)
    put(done / "old.json", 100, 20 * DAY)
    put(done / "new.json", 100, 2 * DAY)
    old_logs = run_logs(layout, "2026-10-20-alpha-a1", 50, 20 * DAY)
    run_logs(layout, "2026-11-13-alpha-a1", 50, 2 * DAY)
    put(layout.subsessions_dir / "notes.txt", 10, 90 * DAY)  # not a per-run log: never touched
    report = prune(layout)
    assert removed(report) == {"old.json", *(p.name for p in old_logs)}
    assert {r.reason for r in report.removed} == {"age"} and report.bytes_freed == 200
    assert not (done / "old.json").exists() and (done / "new.json").exists()
    assert not any(p.exists() for p in old_logs) and (layout.subsessions_dir / "notes.txt").exists()
    assert report.total_bytes == 200 and not report.errors


def test_dry_run_reports_the_same_and_changes_nothing(layout: Layout) -> None:
    done = layout.folder(Folder.DONE)
    put(done / "old.json", 100, 20 * DAY)
    run_logs(layout, "old-run", 50, 30 * DAY)
    before = sorted(p.name for p in layout.root.rglob("*"))
    dry = prune(layout, dry_run=True)
    assert sorted(p.name for p in layout.root.rglob("*")) == before
    assert removed(dry) == {"old.json", "old-run.stdout.log", "old-run.stderr.log"}
    assert any(line.startswith("would remove") for line in dry.lines(layout.root))
    assert removed(prune(layout)) == removed(dry)


def test_over_the_size_cap_oldest_go_first(layout: Layout) -> None:
    done = layout.folder(Folder.DONE)
    kb = 1024
    for i in range(6):  # 6 × 300 KB; none is old enough to go by age
        put(done / f"t{i}.json", 300 * kb, (10 - i) * 3600)
    report = prune(layout, mb=1)  # 1 MiB: 3 × 300 KB fit
    assert removed(report) == {"t0.json", "t1.json", "t2.json"}
    assert {r.reason for r in report.removed} == {"size"}
    assert report.total_bytes == 900 * kb <= report.limit_bytes


def test_a_runs_two_logs_go_together_oldest_first(layout: Layout) -> None:
    kb = 1024
    run_logs(layout, "run-a", 300 * kb, 5 * 3600)
    run_logs(layout, "run-b", 300 * kb, 4 * 3600)
    put(layout.folder(Folder.DONE) / "t.json", 300 * kb, 3 * 3600)
    report = prune(layout, mb=1)  # 1.5 MiB -> the oldest run (both its logs) must go
    assert removed(report) == {"run-a.stdout.log", "run-a.stderr.log"}


def test_live_runs_and_fresh_files_are_never_pruned(layout: Layout) -> None:
    live = run_logs(layout, "live-run", 400 * 1024, 40 * DAY)  # old mtime, but the run is still going
    fresh = put(layout.folder(Folder.DONE) / "fresh.json", 400 * 1024, 30)  # written 30 s ago
    future = put(layout.folder(Folder.DONE) / "future.json", 400 * 1024, -3600)  # clock skew
    report = prune(layout, days=1, mb=0.001, protect={live[0]})  # protecting one log protects the run
    assert report.removed == [] and all(p.exists() for p in [*live, fresh, future])
    assert report.total_bytes > report.limit_bytes
    # Protection also matches through a different spelling of the same path.
    other = run_logs(layout, "other-run", 10, 40 * DAY)
    spelled = Path(str(other[1].parent / ".." / "subsessions" / other[1].name))
    assert removed(prune(layout, protect={live[1], spelled})) == set()


# -- event log rotation -----------------------------------------------------------------------------

def event(ts: str, stage: str) -> str:
    return json.dumps({"ts": ts, "level": "info", "stage": stage}) + "\n"


def test_last_months_daily_logs_become_one_monthly_file(layout: Layout) -> None:
    ev = layout.events_dir
    put(ev / "bus-2026-10-30.jsonl", event("2026-10-30T10:00:00Z", "b"), DAY)
    put(ev / "bus-2026-10-02.jsonl", event("2026-10-02T10:00:00Z", "a").rstrip("\n"), DAY)  # torn
    put(ev / "bus-2026-09-30.jsonl", event("2026-09-30T10:00:00Z", "s"), DAY)
    (ev / "bus-2026-10.jsonl").write_text(event("2026-10-01T10:00:00Z", "archived-earlier"))
    (ev / "bus-2026-11-01.jsonl").write_text(event("2026-11-01T10:00:00Z", "this-month"))
    report = prune(layout)
    assert sorted(p.name for p in ev.glob("bus-*")) == ["bus-2026-09.jsonl", "bus-2026-10.jsonl",
                                                         "bus-2026-11-01.jsonl"]
    october = [json.loads(line)["stage"] for line in (ev / "bus-2026-10.jsonl").read_text().splitlines()]
    assert october == ["archived-earlier", "a", "b"]
    assert [(r.kind, r.month, r.lines) for r in report.rotations] == [
        ("events", "2026-09", 1), ("events", "2026-10", 2)]
    assert oct((ev / "bus-2026-10.jsonl").stat().st_mode & 0o777) == "0o600"
    assert prune(layout).rotations == []  # nothing left to rotate


def test_event_rotation_cut_short_is_not_duplicated(layout: Layout) -> None:
    ev = layout.events_dir
    day1 = put(ev / "bus-2026-10-01.jsonl", event("2026-10-01T10:00:00Z", "one"), DAY)
    day2 = put(ev / "bus-2026-10-02.jsonl", event("2026-10-02T10:00:00Z", "two"), DAY)
    # A previous prune wrote the archive and removed day 1, then died before removing day 2.
    (ev / "bus-2026-10.jsonl").write_text(day1.read_text() + day2.read_text())
    day1.unlink()
    prune(layout)
    stages = [json.loads(line)["stage"] for line in (ev / "bus-2026-10.jsonl").read_text().splitlines()]
    assert stages == ["one", "two"] and not day2.exists()


def test_a_daily_log_still_being_written_waits(layout: Layout) -> None:
    late = put(layout.events_dir / "bus-2026-10-31.jsonl", event("2026-10-31T23:59:59Z", "late"), 10)
    t = NOW.timestamp() - 10
    assert prune(layout).rotations == [] and late.exists()
    assert [r.month for r in prune(layout, now=datetime.fromtimestamp(t + 120, timezone.utc)).rotations] == ["2026-10"]


def test_dry_run_rotates_nothing(layout: Layout) -> None:
    daily = put(layout.events_dir / "bus-2026-10-01.jsonl", event("2026-10-01T10:00:00Z", "one"), DAY)
    report = prune(layout, dry_run=True)
    assert [r.month for r in report.rotations] == ["2026-10"] and daily.exists()
    assert not (layout.events_dir / "bus-2026-10.jsonl").exists()
    assert any(line.startswith("would rotate events 2026-10") for line in report.lines(layout.root))


# -- ledger rotation --------------------------------------------------------------------------------

def row(ts: str, run: str) -> str:
    return json.dumps({"ts": ts, "tick": run, "cost_usd": 0.01}) + "\n"


def test_ledger_rows_of_earlier_months_move_to_monthly_files(layout: Layout) -> None:
    ledger = layout.ledger_file
    ledger.write_text(row("2026-09-10T10:00:00.000Z", "s1") + row("2026-10-10T10:00:00.000Z", "o1")
                      + row("2026-11-02T10:00:00.000Z", "n1") + "not json\n"
                      + row("2026-10-20T10:00:00.000Z", "o2") + row("2026-11-14T10:00:00.000Z", "n2"))
    ledger.chmod(0o600)
    report = prune(layout)
    ticks = lambda p: [json.loads(line)["tick"] for line in p.read_text().splitlines()]  # noqa: E731
    assert ticks(layout.state_dir / "cost-ledger-2026-09.jsonl") == ["s1"]
    assert ticks(layout.state_dir / "cost-ledger-2026-10.jsonl") == ["o1", "o2"]
    assert ledger.read_text().splitlines() == [row("2026-11-02T10:00:00.000Z", "n1").strip(), "not json",
                                               row("2026-11-14T10:00:00.000Z", "n2").strip()]
    assert [(r.kind, r.month, r.lines) for r in report.rotations] == [
        ("ledger", "2026-09", 1), ("ledger", "2026-10", 2)]
    assert oct(ledger.stat().st_mode & 0o777) == "0o600"
    # Next month, the same again: October's archive grows, it is never overwritten.
    ledger.write_text(ledger.read_text() + row("2026-10-30T10:00:00.000Z", "o3"))
    prune(layout)
    assert ticks(layout.state_dir / "cost-ledger-2026-10.jsonl") == ["o1", "o2", "o3"]


def test_ledger_rotation_cut_short_is_not_duplicated(layout: Layout) -> None:
    old = row("2026-10-10T10:00:00.000Z", "o1")
    layout.ledger_file.write_text(old + row("2026-11-10T10:00:00.000Z", "n1"))
    # A previous prune archived October, then died before rewriting the ledger.
    (layout.state_dir / "cost-ledger-2026-10.jsonl").write_text(old)
    prune(layout)
    assert (layout.state_dir / "cost-ledger-2026-10.jsonl").read_text() == old
    assert layout.ledger_file.read_text() == row("2026-11-10T10:00:00.000Z", "n1")


def test_ledger_dry_run_and_nothing_to_do(layout: Layout) -> None:
    text = row("2026-10-10T10:00:00.000Z", "o1") + row("2026-11-10T10:00:00.000Z", "n1")
    layout.ledger_file.write_text(text)
    assert [r.month for r in prune(layout, dry_run=True).rotations] == ["2026-10"]
    assert layout.ledger_file.read_text() == text and not list(layout.state_dir.glob("cost-ledger-*"))
    layout.ledger_file.write_text(row("2026-11-10T10:00:00.000Z", "n1"))
    inode = layout.ledger_file.stat().st_ino
    assert prune(layout).rotations == [] and layout.ledger_file.stat().st_ino == inode  # not rewritten


def test_rotation_waits_for_the_lock_and_loses_no_concurrent_append(layout: Layout,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = layout.ledger_file
    ledger.write_text(row("2026-10-10T10:00:00.000Z", "o1") + row("2026-11-10T10:00:00.000Z", "n1"))
    held = retention.lock_ledger(ledger)
    assert held is not None
    waiting: set[int] = set()  # threads that have asked for the lock on this ledger file (the one held)
    real_flock, inode = fcntl.flock, ledger.stat().st_ino

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX and os.fstat(fd).st_ino == inode:
            waiting.add(threading.get_ident())
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    pruned = threading.Event()
    pruner = threading.Thread(target=lambda: (prune(layout), pruned.set()))
    appender = threading.Thread(target=Ledger(ledger).append, args=(json.loads(row("2026-11-14T10:00:00.000Z", "n2")),))
    pruner.start()
    appender.start()  # opens the file the pruner is about to replace, then waits for the lock
    wait_for(lambda: {pruner.ident, appender.ident} <= waiting or pruned.is_set(), timeout=5,
             what="the pruner and the appender to wait for the lock")
    assert not pruned.is_set()  # the rotation waits for the lock
    os.close(held)
    pruner.join(5)
    appender.join(5)
    assert pruned.is_set()
    ticks = [json.loads(line)["tick"] for line in ledger.read_text().splitlines()]
    assert sorted(ticks) == ["n1", "n2"]
    assert (layout.state_dir / "cost-ledger-2026-10.jsonl").read_text() == row("2026-10-10T10:00:00.000Z", "o1")


def test_lock_ledger_without_a_ledger(layout: Layout) -> None:
    assert retention.lock_ledger(layout.ledger_file) is None
    assert prune(layout).rotations == []


# -- settings and the command -----------------------------------------------------------------------

def test_settings_default_and_reject_bad_values() -> None:
    defaults = Settings.from_env({})
    assert (defaults.retention_days, defaults.logs_max_mb) == (14.0, 500.0)
    custom = Settings.from_env({"MAESTRO_RETENTION_DAYS": "0.5", "MAESTRO_LOGS_MAX_MB": " "})
    assert (custom.retention_days, custom.logs_max_mb) == (0.5, 500.0)
    for name, value in (("MAESTRO_RETENTION_DAYS", "0"), ("MAESTRO_LOGS_MAX_MB", "lots"),
                        ("MAESTRO_LOGS_MAX_MB", "inf"), ("MAESTRO_RETENTION_DAYS", "-3")):
        with pytest.raises(ConfigError, match=f"^{name}='{value}': "):
            Settings.from_env({name: value})


def test_prune_command_dry_run_then_for_real(layout: Layout) -> None:
    now = datetime.now(timezone.utc)
    put(layout.folder(Folder.DONE) / "old.json", 100, 20 * DAY, now)
    live = run_logs(layout, "live-run", 10, 30 * DAY, now)
    atomic_write_json(layout.consumer_file, {"live_subsessions": [{"stdout_log": str(live[0])}]})
    runner = CliRunner()
    dry = runner.invoke(cli, ["--root", str(layout.root), "prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[0].startswith("would remove state/cadence-bus/done/old.json (100 B, age)")
    assert (layout.folder(Folder.DONE) / "old.json").exists()
    real = runner.invoke(cli, ["--root", str(layout.root), "prune", "--json"],
                         env={"MAESTRO_RETENTION_DAYS": "10"})
    assert real.exit_code == 0, real.output
    doc = json.loads(real.stdout)
    assert [r["path"] for r in doc["removed"]] == ["state/cadence-bus/done/old.json"] and doc["bytes_freed"] == 100
    assert all(p.exists() for p in live)  # the daemon reports that run as live


def test_prune_command_rejects_a_bad_setting(layout: Layout) -> None:
    result = CliRunner().invoke(cli, ["--root", str(layout.root), "prune"], env={"MAESTRO_LOGS_MAX_MB": "0"})
    assert result.exit_code == 78
    assert result.stderr.strip() == "maestro: MAESTRO_LOGS_MAX_MB='0': must be a number > 0"


def test_the_settings_files_of_a_policy_no_run_used_for_the_retention_period_go(layout: Layout) -> None:
    """Every run touches its policy's files, so only those of a policy unused for the retention period are old."""
    from maestro_py.permissions import Permissions
    from maestro_py.session import enforce

    now = datetime.now(timezone.utc)
    old = enforce.enforcement(Permissions(tools=("Read", "Bash")), layout.root, layout.run_settings_dir, Path("/h"))
    used = enforce.enforcement(Permissions(), layout.root, layout.run_settings_dir, Path("/h"))
    for rules in (old, used):
        enforce.materialise(rules.files())
        for path, _ in rules.files():
            os.utime(path, (now.timestamp() - 30 * 86400,) * 2)
    enforce.materialise(used.files())  # a run under this policy now
    report = retention.prune(layout, now=now, retention_days=14, max_mb=500, protect=set(), dry_run=False)
    assert sorted(p.name for p in layout.run_settings_dir.iterdir()) == sorted(p.name for p, _ in used.files())
    assert {r.path.name for r in report.removed} == {p.name for p, _ in old.files()}
