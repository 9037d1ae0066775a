"""The README's walk-throughs run as written: each shell block after a `<!-- walk-through: … -->` marker is read
from the README itself (so it cannot drift) and run line by line in bash, in a HOME of its own, with
`EDITOR=true` (the edit step opens nothing). Every line must exit 0; `maestro … run` (the long-running daemon) is
started, must become healthy, and must stop cleanly on SIGTERM.

"Using it on a real agent" runs as on a machine whose only `claude` is the one `make` installed in `.tools/claude`:
no CLAUDE_BIN, no claude on PATH (`init` finds it and records it), the real CLI answered by the loopback Messages
API fake. "Install for real" runs with the fake claude (`tests/fake_claude.py`) as CLAUDE_BIN.

The only change made to a line: `/path/to/maestro_py` names this checkout."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from maestro_py.envfile import load_env
from maestro_py.errors import ClaudeUnavailable
from maestro_py.paths import Layout
from maestro_py.session.command import PROJECT_CLAUDE, resolve_claude
from tests.e2e.fake_api import FakeMessagesAPI
from tests.fakes import REPO, daemon_env, wait_for

MARKER = "<!-- walk-through:"
CLONE_PLACEHOLDER = "/path/to/maestro_py"


def walkthroughs() -> list[list[str]]:
    """The command lines of each marked block, in README order (comments kept: bash ignores them)."""
    lines = (REPO / "README.md").read_text().splitlines()
    blocks: list[list[str]] = []
    for i, line in enumerate(lines):
        if not line.startswith(MARKER):
            continue
        assert lines[i + 1] == "```sh", f"README line {i + 2}: a walk-through marker must precede a ```sh block"
        end = lines.index("```", i + 2)
        blocks.append([text for text in lines[i + 2:end] if text.strip() and not text.lstrip().startswith("#")])
    return blocks


def environment(tmp_path: Path) -> dict[str, str]:
    """A HOME of its own, the fake claude, a no-op editor, and a `systemctl` that records its arguments."""
    home = tmp_path / "home"
    stubs = tmp_path / "stubs"
    for folder in (home, stubs):
        folder.mkdir(exist_ok=True)
    systemctl = stubs / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "systemctl.calls"}\n')
    systemctl.chmod(0o755)
    env = daemon_env(tmp_path, MAESTRO_POLL_MS=200)
    env.update(HOME=str(home), EDITOR="true", XDG_CONFIG_HOME=str(home / ".config"),
               PATH=f"{stubs}:{home / '.local' / 'bin'}:{env['PATH']}")
    return env


def run_line(line: str, env: dict[str, str]) -> None:
    """One line of a walk-through; the long-running daemon must come up healthy and drain on SIGTERM."""
    command = line.replace(CLONE_PLACEHOLDER, str(REPO)).split("  #")[0].strip()
    words = shlex.split(command)
    if words[-1] != "run":
        out = subprocess.run(["bash", "-c", command], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{line}\nexit {out.returncode}\n{out.stdout}\n{out.stderr}"
        return
    daemon = subprocess.Popen(["bash", "-c", f"exec {command}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    status = ["bash", "-c", re.sub(r" run$", " status", command)]
    try:
        wait_for(lambda: subprocess.run(status, env=env, cwd=REPO, capture_output=True).returncode == 0,
                 timeout=30, what=f"a healthy daemon from: {line}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, f"{line}\nexit {daemon.returncode}\n{err}"


def test_the_readme_marks_its_walkthroughs() -> None:
    blocks = walkthroughs()
    assert len(blocks) == 2
    assert any(line.split()[-1] == "run" for line in (b.split("  #")[0] for b in blocks[0]))


def without_claude(env: dict[str, str]) -> dict[str, str]:
    """`env` with no CLAUDE_BIN and no PATH entry holding a `claude`."""
    out = {k: v for k, v in env.items() if k != "CLAUDE_BIN"}
    out["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep)
                                  if not os.access(os.path.join(d or ".", "claude"), os.X_OK))
    return out


def test_using_it_on_a_real_agent_runs_as_written(tmp_path: Path) -> None:
    if not (PROJECT_CLAUDE.is_file() and os.access(PROJECT_CLAUDE, os.X_OK)):
        pytest.skip(f"the real claude CLI is not installed at {PROJECT_CLAUDE} (`make claude` installs it)")
    env = without_claude(environment(tmp_path))
    try:
        elsewhere: str | None = resolve_claude(env)  # one where maestro always looks: init has nothing to record
    except ClaudeUnavailable:
        elsewhere = None
    with FakeMessagesAPI() as api:
        (tmp_path / "home" / "tmp").mkdir(parents=True, exist_ok=True)
        env.update(ANTHROPIC_BASE_URL=f"http://127.0.0.1:{api.port}", TMPDIR=str(tmp_path / "home" / "tmp"),
                   DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        for line in walkthroughs()[0]:
            run_line(line, env)
        assert len(api.posts()) >= 1, "the hello tick did not reach the real CLI's API"
    root = Path(env["HOME"]) / "agents" / "chief-of-staff"
    done = list((root / "state" / "cadence-bus" / "done").glob("*.json"))
    assert len(done) == 1, "the hello tick the walk-through queued did not run"
    assert load_env(Layout(root), base={}).get("CLAUDE_BIN") == (None if elsewhere else str(PROJECT_CLAUDE))


@pytest.mark.slow  # a fresh venv and a pip install with its dependencies (about a minute)
def test_install_for_real_runs_as_written(tmp_path: Path) -> None:
    env = environment(tmp_path)
    env.pop("PYTHONPATH")  # the installed copy, not this checkout, must be what runs
    for line in walkthroughs()[1]:
        run_line(line, env)
    home = Path(env["HOME"])
    unit = (home / ".config" / "systemd" / "user" / "maestro-chief-of-staff.service").read_text()
    assert f"ExecStart={home}/.local/share/maestro/bin/python" in unit and str(REPO) not in unit.split("PATH=")[0]
    calls = (tmp_path / "systemctl.calls").read_text()
    assert "--user daemon-reload" in calls and "--user enable --now maestro-chief-of-staff.service" in calls
    assert os.path.realpath(home / ".local" / "bin" / "maestro").startswith(str(home / ".local" / "share"))
