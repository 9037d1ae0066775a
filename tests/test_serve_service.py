"""`maestro service … --serve`: `maestro serve` as a second systemd unit / launchd agent beside the daemon."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.paths import Layout
from maestro_py.registry import Registry
from maestro_py.service import units as svc
from tests.fakes import invoke, one_line_error, write_agent

PY = sys.executable
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
CLAUDE = ["--claude", "/bin/true"]


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    return write_agent(tmp_path / "agent", '[tidy]\nmode = "inline"\nhandler = "noop"\nschedule = "*/5 * * * *"\n').root


def spec(root: Path, **changes: object) -> svc.ServiceSpec:
    registry = Registry.load(Layout(root))
    values: dict[str, object] = dict(root=root, python=PY, name="agent", schedules=svc.schedules(registry),
                                     stop_timeout=50, claude="/bin/true", serve=("127.0.0.1", 8787))
    values.update(changes)
    return svc.ServiceSpec(**values)  # type: ignore[arg-type]


def test_the_systemd_serve_unit(agent: Path) -> None:
    files = {f.name: f for f in svc.systemd_files(spec(agent))}
    assert set(files) == {"maestro-agent.service", "maestro-agent.serve.service", "maestro-agent-tidy.timer",
                          "maestro-agent-tidy.service", "maestro-agent.trigger-failed@.service"}
    unit = files["maestro-agent.serve.service"]
    assert unit.unit == "maestro-agent.serve.service"
    text = unit.content
    assert f"ExecStart={PY} -m maestro_py --root {agent} serve --host 127.0.0.1 --port 8787\n" in text
    assert "Type=exec" in text and "Restart=on-failure" in text and "TimeoutStopSec=20" in text
    assert f"Environment=MAESTRO_AGENT_ROOT={agent}" in text and "WantedBy=default.target" in text
    assert "CLAUDE_BIN" not in text and "WatchdogSec" not in text  # it never spawns and sends no notifications
    system = {f.name: f.content for f in svc.systemd_files(spec(agent, user=False, run_as="maestro"))}
    assert "User=maestro" in system["maestro-agent.serve.service"]
    assert "After=network-online.target" in system["maestro-agent.serve.service"]
    assert "maestro-agent.serve.service" not in {f.name for f in svc.systemd_files(spec(agent, serve=None))}


def test_a_cadence_named_serve_does_not_collide(tmp_path: Path) -> None:
    root = write_agent(tmp_path / "agent", '[serve]\nmode = "inline"\nhandler = "noop"\nschedule = "0 * * * *"\n').root
    names = [f.name for f in svc.systemd_files(spec(root))]
    assert len(names) == len(set(names)) and "maestro-agent-serve.service" in names


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_serve_unit_passes_systemd_analyze_verify(agent: Path, tmp_path: Path) -> None:
    folder = tmp_path / "units"
    folder.mkdir()
    files = svc.systemd_files(spec(agent, user=False, run_as="root"))
    for f in files:
        (folder / f.name).write_text(f.content)
    result = subprocess.run([SYSTEMD_ANALYZE or "", "verify", "--man=no", str(folder / "maestro-agent.serve.service")],
                            capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


def test_the_launchd_serve_agent(agent: Path) -> None:
    files = {f.name: f for f in svc.launchd_files(spec(agent, serve=("127.0.0.1", 9000)))}
    doc = plistlib.loads(files["com.maestro.agent.serve.plist"].content.encode())
    assert doc["Label"] == "com.maestro.agent.serve" and doc["KeepAlive"] is True and doc["RunAtLoad"] is True
    assert doc["ProgramArguments"] == [PY, "-m", "maestro_py", "--root", str(agent), "serve", "--host", "127.0.0.1",
                                       "--port", "9000"]
    assert doc["StandardErrorPath"] == str(agent / "logs" / "launchd-serve.err.log") and doc["ExitTimeOut"] == 20
    assert "CLAUDE_BIN" not in doc["EnvironmentVariables"]


@pytest.mark.parametrize("serve", [("0.0.0.0 --evil", 8787), ("127.0.0.1", 0), ("127.0.0.1", 70000), ("a\nb", 1)])
def test_bad_serve_addresses_are_refused(agent: Path, serve: tuple[str, int]) -> None:
    with pytest.raises(svc.ServiceError, match="cannot serve"):
        spec(agent, serve=serve)


def test_install_and_uninstall_include_the_server(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    dest = tmp_path / "units"
    result = invoke(runner, agent, "service", "install", "--systemd", "--user", "--serve", "--dest", str(dest), *CLAUDE)
    assert result.exit_code == 0, result.output
    assert (dest / "maestro-agent.serve.service").read_text() == {
        f.name: f.content for f in svc.systemd_files(spec(agent))}["maestro-agent.serve.service"]
    assert "enable --now maestro-agent.service maestro-agent.serve.service maestro-agent-tidy.timer" in result.stdout
    removed = invoke(runner, agent, "service", "uninstall", "--systemd", "--user", "--serve", "--dest", str(dest),
                     *CLAUDE)
    assert removed.exit_code == 0 and "disable --now maestro-agent.service maestro-agent.serve.service" in removed.stdout
    assert list(dest.iterdir()) == []
    launchd = invoke(runner, agent, "service", "print", "--launchd", "--serve", "--serve-port", "9001", *CLAUDE)
    assert launchd.exit_code == 0 and "com.maestro.agent.serve.plist <==" in launchd.stdout
    assert "<string>9001</string>" in launchd.stdout


def test_serve_options_are_checked(runner: CliRunner, agent: Path) -> None:
    alone = invoke(runner, agent, "service", "print", "--systemd", "--serve-port", "9000", *CLAUDE)
    assert alone.exit_code == 2 and "go with --serve" in one_line_error(alone)
    wide = invoke(runner, agent, "service", "print", "--systemd", "--serve", "--serve-host", "0.0.0.0", *CLAUDE)
    assert wide.exit_code == 2 and "MAESTRO_SERVE_TOKEN" in one_line_error(wide)
    (agent / ".env").write_text("MAESTRO_SERVE_TOKEN=tok-0123456789abcdef-xyz\n")
    ok = invoke(runner, agent, "service", "print", "--systemd", "--serve", "--serve-host", "0.0.0.0", *CLAUDE)
    assert ok.exit_code == 0 and "serve --host 0.0.0.0 --port 8787" in ok.stdout
    assert "tok-0123456789abcdef-xyz" not in ok.stdout  # the token stays in .env, never in a unit file
