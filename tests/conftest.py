"""Shared fixtures: a fresh agent root, a fake clock, a bus on it, a CLI runner."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.bus.events import EventLog
from maestro_py.bus.store import Bus
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


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """click's CliRunner with no MAESTRO_* setting of the machine and a HOME (and XDG config) of its own."""
    for name in [n for n in os.environ if n.startswith("MAESTRO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    return CliRunner()
