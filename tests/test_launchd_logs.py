"""launchd's stdout/stderr files (`logs/launchd-*.log`) are rotated by retention: launchd cannot, and macOS's
newsyslog would need root. Copy to `.1`, then truncate in place under the writer's O_APPEND descriptor."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.daemon import launchd_logs, retention
from maestro_py.paths import Layout
from tests.fakes import FakeClock, FakeSpawner, events, invoke, make_daemon

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CAP = 1000


@pytest.fixture(autouse=True)
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launchd_logs, "MAX_BYTES", CAP)


def launchd_writer(path: Path) -> int:
    """A descriptor opened as launchd opens StandardErrorPath: write-only, create, append."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def prune(layout: Layout, *, dry_run: bool = False) -> retention.PruneReport:
    return retention.prune(layout, now=NOW, retention_days=14, max_mb=500, protect=set(), dry_run=dry_run)


def test_a_log_over_the_cap_is_rotated_to_dot_1_and_its_writer_goes_on_at_the_start(layout: Layout) -> None:
    err = layout.logs_dir / "launchd-daemon.err.log"
    fd = launchd_writer(err)
    try:
        old = b"".join(b"event %04d\n" % i for i in range(120))  # 1320 bytes
        os.write(fd, old)
        small = layout.logs_dir / "launchd-heartbeat.log"
        small.write_bytes(b"enqueued\n" * 10)  # under the cap: left alone
        report = prune(layout)
        assert [(r.kind, r.archive.name, r.lines) for r in report.rotations] == [
            ("launchd", "launchd-daemon.err.log.1", 120)]
        assert (layout.logs_dir / "launchd-daemon.err.log.1").read_bytes() == old
        assert err.stat().st_size == 0
        os.write(fd, b"after the rotation\n")  # the daemon's next line, through launchd's descriptor
        assert err.read_bytes() == b"after the rotation\n"  # at the start: no hole of NULs before it
        assert small.read_bytes() == b"enqueued\n" * 10 and not (layout.logs_dir / "launchd-heartbeat.log.1").exists()
        assert any("rotated launchd 2026-11: logs/launchd-daemon.err.log, 120 line(s) -> logs/launchd-daemon.err.log.1"
                   in line for line in report.lines(layout.root))
        os.write(fd, b"y" * (CAP + 1))
        prune(layout)  # the next rotation replaces the copy: one generation kept, at most twice the cap
        assert (layout.logs_dir / "launchd-daemon.err.log.1").read_bytes() == b"after the rotation\n" + b"y" * (CAP + 1)
        assert sorted(p.name for p in layout.logs_dir.glob("launchd-daemon*")) == [
            "launchd-daemon.err.log", "launchd-daemon.err.log.1"]
    finally:
        os.close(fd)


def test_a_dry_run_only_says_so_and_links_are_not_followed(layout: Layout, tmp_path: Path) -> None:
    big = layout.logs_dir / "launchd-serve.out.log"
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(b"GET /healthz\n" * 100)
    outside = tmp_path / "elsewhere.log"
    outside.write_bytes(b"x" * (CAP * 2))
    (layout.logs_dir / "launchd-evil.log").symlink_to(outside)
    report = prune(layout, dry_run=True)
    assert [(r.archive.name, r.lines) for r in report.rotations] == [("launchd-serve.out.log.1", 100)]
    assert any(line.startswith("would rotate launchd") for line in report.lines(layout.root))
    assert big.stat().st_size == 1300 and not (layout.logs_dir / "launchd-serve.out.log.1").exists()
    prune(layout)
    assert outside.stat().st_size == CAP * 2 and not (layout.logs_dir / "launchd-evil.log.1").exists()


def test_the_daemons_hourly_prune_rotates_them(layout: Layout, clock: FakeClock) -> None:
    err = layout.logs_dir / "launchd-daemon.err.log"
    fd = launchd_writer(err)
    try:
        os.write(fd, b"z" * (CAP + 10))
        daemon = make_daemon(layout, clock, FakeSpawner())
        daemon.step()  # the first step prunes
        assert err.stat().st_size == 0 and (layout.logs_dir / "launchd-daemon.err.log.1").stat().st_size == CAP + 10
        [pruned] = [e for e in events(layout) if e["stage"] == "pruned"]
        assert pruned["rotated"] == ["launchd:2026-11"]
    finally:
        os.close(fd)


def test_maestro_prune_rotates_them_too(runner: CliRunner, layout: Layout) -> None:
    (layout.logs_dir / "launchd-memo.log").write_bytes(b"queued memo\n" * 200)
    result = invoke(runner, layout.root, "prune")
    assert result.exit_code == 0, result.output
    assert "rotated launchd" in result.stdout and "logs/launchd-memo.log.1" in result.stdout
    assert (layout.logs_dir / "launchd-memo.log").stat().st_size == 0
