"""`maestro doctor` says when the installed service files no longer match `cadences.toml` (the gap a sync closes)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from maestro_py.ops.probe import Level, Probe
from maestro_py.ops.service_checks import check_services
from maestro_py.paths import Layout
from tests.fakes import invoke
from tests.service_support import drop_schedule, example_agent


def services(root: Path) -> tuple[Level, str]:
    check = check_services(Probe(Layout(root), env={"HOME": str(root.parent)}, offline=True))
    return check.level, check.detail


def test_the_doctor_flags_service_files_left_behind_by_a_registry_edit(runner: CliRunner, tmp_path: Path) -> None:
    agent = example_agent(tmp_path / "agent")
    assert services(agent) == (Level.OK, "not installed as a service (`maestro service install`)")
    dest = tmp_path / "units"
    installed = invoke(runner, agent, "service", "install", "--systemd", "--user", "--claude", "/bin/true",
                       "--dest", str(dest))
    assert installed.exit_code == 0, installed.output
    level, detail = services(agent)
    assert level is Level.OK and "in step with cadences.toml" in detail, detail
    drop_schedule(agent, "heartbeat")  # the timer now runs a cadence that has no schedule
    level, detail = services(agent)
    assert level is Level.WARN and "maestro-agent-heartbeat.timer" in detail and "maestro service sync" in detail
    assert invoke(runner, agent, "service", "sync").exit_code == 0
    assert services(agent)[0] is Level.OK
    (dest / "maestro-agent.service").unlink()  # the daemon's unit removed by hand
    level, detail = services(agent)
    assert level is Level.WARN and "not in" in detail
