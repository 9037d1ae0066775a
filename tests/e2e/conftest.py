"""Fixtures for end-to-end tests that drive the real ``claude`` CLI against the loopback API fake.

Every test collected under tests/e2e gets the ``e2e`` marker. The CLI comes from
``scripts/install-claude.sh`` (``.tools/claude/node_modules/.bin/claude``) or ``$CLAUDE_BIN``;
it is a hard failure, not a skip, when it is missing, so CI cannot go green without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

E2E_DIR = Path(__file__).resolve().parent
if str(E2E_DIR) not in sys.path:  # pytest's prepend import mode does this too; be explicit
    sys.path.insert(0, str(E2E_DIR))

from fake_api import FakeMessagesAPI  # noqa: E402
from support import (  # noqa: E402
    Agent, ClaudeRun, MakeAgent, hermetic_claude_env, kill_tree, kill_trees, marked_processes,
)

from tests.fakes import REPO, write_agent  # noqa: E402

LOCAL_CLAUDE = REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``e2e`` (this hook sees the whole session's items)."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def claude_bin() -> str:
    """Path of the real Claude Code CLI (``$CLAUDE_BIN`` or the project-local install)."""
    path = Path(os.environ["CLAUDE_BIN"]) if os.environ.get("CLAUDE_BIN") else LOCAL_CLAUDE
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"claude CLI not found at {path}: run scripts/install-claude.sh (make test does it)")
    return str(path)


@pytest.fixture
def fake_api() -> Iterator[FakeMessagesAPI]:
    """A started FakeMessagesAPI in ``ok`` mode, stopped after the test."""
    api = FakeMessagesAPI().start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def claude_home(tmp_path: Path) -> Path:
    """A fresh HOME for the CLI (it writes ~/.claude, ~/.claude.json and shell snapshots there)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return home


@pytest.fixture
def claude_cwd(tmp_path: Path) -> Path:
    """An empty working directory for the CLI (it runs git and rg in its cwd)."""
    cwd = tmp_path / "work"
    cwd.mkdir(exist_ok=True)
    return cwd


@pytest.fixture
def claude_env(fake_api: FakeMessagesAPI, tmp_path: Path) -> dict[str, str]:
    """A hermetic environment for running the CLI against ``fake_api`` (HOME under tmp_path)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return hermetic_claude_env(fake_api.url, home)


@pytest.fixture
def run_claude(claude_bin: str, claude_env: dict[str, str], claude_cwd: Path) -> Callable[..., ClaudeRun]:
    """Call ``run_claude(prompt, *args, env=None, timeout=30)`` to run ``claude --print`` once.

    The prompt goes to stdin (then stdin is closed); args follow
    ``--print --output-format json --no-session-persistence``; ``env`` entries override
    ``claude_env``. On timeout the CLI and its descendants are killed and the test fails.
    """

    def run(prompt: str | bytes, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> ClaudeRun:
        data = prompt.encode() if isinstance(prompt, str) else prompt
        cmd = [claude_bin, "--print", "--output-format", "json", "--no-session-persistence", *args]
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**claude_env, **(env or {})},
            cwd=claude_cwd,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            out, err = proc.communicate()
            pytest.fail(f"claude did not finish within {timeout}s; stdout={out[-2000:]!r} stderr={err[-2000:]!r}")
        return ClaudeRun(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                         time.monotonic() - start)

    return run


@pytest.fixture
def make_agent(tmp_path: Path, fake_api: FakeMessagesAPI, claude_bin: str) -> Iterator[MakeAgent]:
    """`make_agent(prompts, registry="", **env)`: a fresh root with `cadences/<name>.md` files.

    Teardown SIGKILLs any daemon still running and every process carrying this test's HOME, so a
    failed test leaves no stray `claude` or `sleep 300` (the tests themselves assert there are none).
    """
    agents: list[Agent] = []

    def make(prompts: dict[str, str], registry: str = "", **extra: str | None) -> Agent:
        assert not agents, "one agent per test"
        layout = write_agent(tmp_path / "agent", registry, prompts)
        home = tmp_path / "home"
        home.mkdir()
        env = hermetic_claude_env(fake_api.url, home)
        env.update({
            "CLAUDE_BIN": claude_bin,
            "PYTHONPATH": str(REPO),
            "MAESTRO_KILL_GRACE_SECONDS": "1",
            "MAESTRO_STOP_GRACE_SECONDS": "0.5",
            "MAESTRO_BACKOFF_SECONDS": "0",  # a failed attempt is retried at once (the retry tests need it)
        })
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        logs = tmp_path / "daemon-logs"
        logs.mkdir()
        agent = Agent(layout, home, env, logs)
        agents.append(agent)
        return agent

    yield make

    for agent in agents:
        for proc in agent.daemons:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        kill_trees(marked_processes(agent.home))
