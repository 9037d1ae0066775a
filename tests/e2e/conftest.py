"""Fixtures for end-to-end tests that drive the real ``claude`` CLI against the loopback API fake.

Every test collected under tests/e2e gets the ``e2e`` marker. The CLI comes from
``scripts/install-claude.sh`` (``.tools/claude/node_modules/.bin/claude``) or ``$CLAUDE_BIN``;
it is a hard failure, not a skip, when it is missing, so CI cannot go green without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

E2E_DIR = Path(__file__).resolve().parent
if str(E2E_DIR) not in sys.path:  # pytest's prepend import mode does this too; be explicit
    sys.path.insert(0, str(E2E_DIR))

from fake_api import FAKE_KEY, FakeMessagesAPI  # noqa: E402

PROJECT_ROOT = E2E_DIR.parent.parent
LOCAL_CLAUDE = PROJECT_ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"

# Dropped from the inherited environment so no real credential, endpoint or setting reaches the CLI
# (this also removes CLAUDECODE=1, set when the tests themselves run inside Claude Code).
_STRIP_PREFIXES = ("ANTHROPIC", "CLAUDE", "OTEL_")
_STRIP_NAMES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "IS_SANDBOX"}


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


def hermetic_claude_env(base_url: str, home: Path, *, api_key: str = FAKE_KEY) -> dict[str, str]:
    """Environment that points the CLI at ``base_url`` with a fake key, offline, fast and in ``home``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(_STRIP_PREFIXES) and k not in _STRIP_NAMES and k.upper() not in _STRIP_NAMES
    }
    tmp = home / "tmp"
    for sub in (tmp, home / ".config", home / ".cache", home / ".local" / "share", home / ".local" / "state"):
        sub.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        TMPDIR=str(tmp),  # the Bash tool keeps scratch files in $TMPDIR/claude-<uid>/
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY=api_key,
        # No title request, telemetry, update check or DNS lookups of api.anthropic.com.
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        # One POST per request: errors surface in ~1 s instead of after minutes of backoff.
        CLAUDE_CODE_MAX_RETRIES="0",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


@pytest.fixture
def claude_env(fake_api: FakeMessagesAPI, tmp_path: Path) -> dict[str, str]:
    """A hermetic environment for running the CLI against ``fake_api`` (HOME under tmp_path)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return hermetic_claude_env(fake_api.url, home)


@dataclass
class ClaudeRun:
    """The outcome of one CLI run."""

    returncode: int
    stdout: str
    stderr: str
    wall: float

    @property
    def json(self) -> Any:
        """stdout parsed as one JSON object (``--output-format json``)."""
        return json.loads(self.stdout)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (tool processes run in sessions of their own)."""
    try:
        proc = psutil.Process(pid)
        procs = [*proc.children(recursive=True), proc]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


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
