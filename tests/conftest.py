"""Shared fixtures (a fresh agent root, a fake clock, a bus on it, a CLI runner) and the `slow` switch.

Tests marked `slow` (the long torture variants, the README install walk-through) are skipped unless MAESTRO_TEST_FULL=1, which `.ci/run` sets;
the torture tests run at MAESTRO_TORTURE_SCALE (default 0.3, or 1 with MAESTRO_TEST_FULL=1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.bus.events import EventLog
from maestro_py.bus.store import Bus
from maestro_py.paths import Layout
from tests.fakes import FakeClock, FakeReceiver
from tests.torture.support import FULL, SCALE

SLOW_SKIPPED = ("slow (a long torture variant, or a fresh venv and pip install): runs with MAESTRO_TEST_FULL=1, "
                "as .ci/run does")


def pytest_report_header(config: pytest.Config) -> str:
    """Say up front which run this is."""
    kind = "full run, slow tests included" if FULL else "slow tests skipped (MAESTRO_TEST_FULL=1 runs them)"
    return f"maestro tests: {kind}; torture scale {SCALE:g} (MAESTRO_TORTURE_SCALE)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the `slow` tests, with the reason, unless MAESTRO_TEST_FULL=1."""
    if FULL:
        return
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.skip(reason=SLOW_SKIPPED))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path / "agent")
    lay.root.mkdir()
    lay.ensure()
    return lay


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
def receiver() -> Iterator[FakeReceiver]:
    """A loopback alert receiver (answers 200), stopped after the test."""
    rec = FakeReceiver()
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture
def bus(layout: Layout, clock: FakeClock) -> Bus:
    return Bus(layout, clock=clock, events=EventLog(layout, clock=clock))


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """click's CliRunner with no MAESTRO_* setting of the machine and a HOME (and XDG config) of its own."""
    for name in [n for n in os.environ if n.startswith("MAESTRO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    return CliRunner()


# -- a real PostgreSQL server (tests/pgserver.py) -------------------------------------------------------

@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the whole session, or a skip that says why none can be had here."""
    from tests.pgserver import PgServer, pg_available

    why = pg_available()
    if why is None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            why = "psycopg is not installed (pip install -e '.[test]')"
    if why is not None:
        print(f"\nPostgreSQL tests skipped: {why}")
        pytest.skip(f"no PostgreSQL server: {why}")
    server = PgServer()
    try:  # close() even when start() fails: no server or temp folder outlives the session
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server (dropped afterwards); the server is running."""
    import uuid

    if not pg_server.running:  # a test that stopped it failed before starting it again
        pg_server.start()
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    yield url
    if not pg_server.running:
        pg_server.start()
    pg_server.drop_database(name)
