"""Shared fixtures: a fresh agent root, a fake clock and a bus on it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from maestro_py.bus.store import Bus
from maestro_py.bus.events import EventLog
from maestro_py.paths import Layout
from tests.fakes import FakeClock


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
def bus(layout: Layout, clock: FakeClock) -> Bus:
    return Bus(layout, clock=clock, events=EventLog(layout, clock=clock))
