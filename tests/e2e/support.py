"""What the end-to-end tests share: the CLI's hermetic environment, process trees, and `Agent`, one agent root
driven by `python -m maestro_py` against the real CLI (the `make_agent` fixture in conftest.py builds it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from fake_api import FAKE_KEY

from maestro_py.paths import Folder, Layout
from tests.fakes import REPO, ledger_rows, read_json, wait_for

# Dropped from the inherited environment so no real credential, endpoint or setting reaches the CLI
# (this also removes CLAUDECODE=1, set when the tests themselves run inside Claude Code).
_STRIP_PREFIXES = ("ANTHROPIC", "CLAUDE", "OTEL_")
_STRIP_NAMES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "IS_SANDBOX"}


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


# -- processes ----------------------------------------------------------------------------------------

def marked_processes(home: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment has HOME=`home`: the daemon and all it started."""
    wanted = str(home)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("HOME") == wanted:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    """`pid cmdline` of each process, for a failure message."""
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


def kill_trees(procs: list[psutil.Process]) -> None:
    """SIGKILL every process in `procs` and all their descendants, and wait (5 s at most) until they are gone."""
    everything: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            for p in [proc, *proc.children(recursive=True)]:
                everything[p.pid] = p
        except psutil.NoSuchProcess:
            continue
    for proc in everything.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(everything.values()), timeout=5)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (tool processes run in sessions of their own)."""
    try:
        kill_trees([psutil.Process(pid)])
    except psutil.NoSuchProcess:
        pass


def files_containing(root: Path, needle: str) -> list[str]:
    """Files under `root` (relative paths) whose bytes contain `needle`."""
    data = needle.encode()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and data in p.read_bytes())


# -- the agent ---------------------------------------------------------------------------------------

@dataclass
class Agent:
    """One agent root, the CLI's HOME and the daemon's environment; runs `python -m maestro_py` on them."""

    layout: Layout
    home: Path
    env: dict[str, str]
    logs: Path
    daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.layout.root

    def maestro(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(self.root), *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def enqueue(self, cadence: str) -> str:
        out = self.maestro("enqueue", cadence)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def run_once(self, timeout: float = 60) -> subprocess.CompletedProcess:
        out = self.maestro("run", "--once", timeout=timeout)
        assert out.returncode == 0, f"daemon exited {out.returncode}: {out.stderr[-2000:]}"
        return out

    def start(self, *args: str) -> subprocess.Popen:
        """Start `run ARGS` in the background (output to files, so a full pipe never blocks it)."""
        n = len(self.daemons)
        proc = subprocess.Popen(
            [sys.executable, "-m", "maestro_py", "--root", str(self.root), "run", *args],
            env=self.env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=open(self.logs / f"daemon{n}.out", "wb"), stderr=open(self.logs / f"daemon{n}.err", "wb"),
        )
        self.daemons.append(proc)
        wait_for(lambda: self.layout.consumer_file.exists() or proc.poll() is not None, what="daemon status file")
        assert proc.poll() is None, f"daemon exited at start: {self.daemon_stderr(proc)}"
        return proc

    def daemon_stderr(self, proc: subprocess.Popen) -> str:
        return (self.logs / f"daemon{self.daemons.index(proc)}.err").read_text(errors="replace")[-2000:]

    def status(self) -> dict[str, Any]:
        return read_json(self.layout.consumer_file)

    def tick(self, folder: Folder, tick_id: str) -> dict[str, Any]:
        return read_json(self.layout.folder(folder) / f"{tick_id}.json")

    def ledger(self) -> list[dict[str, Any]]:
        return ledger_rows(self.layout)

    def stdout_logs(self) -> list[Path]:
        return sorted(self.layout.subsessions_dir.glob("*.stdout.log"))

    def leftovers(self, *, timeout: float = 3) -> list[str]:
        """This test's processes still alive after up to `timeout` s (exiting ones get that long to go)."""
        deadline = time.monotonic() + timeout
        while True:
            alive = marked_processes(self.home)
            if not alive or time.monotonic() >= deadline:
                return describe(alive)
            time.sleep(0.05)

    def assert_no_key_under_root(self) -> None:
        assert files_containing(self.root, FAKE_KEY) == []


MakeAgent = Callable[..., Agent]
