"""`make demo` end to end: scripts/demo.sh on a copy of the example agent, with the real claude CLI against the
loopback Messages API fake, exits 0 and prints what the README says it prints."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.fakes import REPO

CLAUDE = REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
TIMEOUT = 180  # seconds; the demo takes a few on this machine


def leftovers(home: Path) -> list[str]:
    """Live processes whose HOME is the demo's: the fake API, the daemon, the CLI and anything they started."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("HOME") == str(home):
                found.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_make_demo_runs_the_example_agent_and_prints_ledger_rows_and_where_to_look(tmp_path: Path) -> None:
    if not (CLAUDE.is_file() and os.access(CLAUDE, os.X_OK)):
        pytest.skip(f"the real claude CLI is not installed at {CLAUDE} (`make claude` installs it)")
    root, work = tmp_path / "agent", tmp_path / "work"
    shutil.copytree(REPO / "examples" / "agent", root,
                    ignore=shutil.ignore_patterns("state", "logs", ".env", "__pycache__"))
    home = work / "home"
    # No credential, endpoint or maestro setting of the caller's reaches the demo; HOME is the demo's own from the
    # start, so every process it starts (the fake API too) can be found by it afterwards.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC", "CLAUDE", "MAESTRO_"))}
    env.update(DEMO_ROOT=str(root), DEMO_WORK=str(work), HOME=str(home))
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"scripts/demo.sh did not finish in {TIMEOUT} s:\n{out}")
    finally:
        left = leftovers(home)
        if proc.poll() is None or left:
            for pid in [int(line.split()[0]) for line in left]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert proc.returncode == 0, out
    assert left == [], f"the demo left processes behind: {left}"
    assert "daemon: not running" in out  # the status after run --once: exit 3 is expected there, not fatal
    rows = out.split("== ledger rows of this run", 1)[1].split("== where to look", 1)[0]
    row = re.compile(r"^(\S+)\s+exit=0 input=\d+ output=\d+ cost_usd=[0-9.e-]+ \d+ ms$", re.M)
    assert sorted(row.findall(rows)) == ["inbox-processor", "weekly-strategic-memo"], out
    where = out.split("== where to look", 1)[1]
    for line in (f"events:        tail -f {root}/logs/cadence-bus/bus-", f"per-run logs:  ls {root}/logs/cadence-bus/",
                 f"status file:   {root}/state/cadence-bus/consumer.json"):
        assert line in where, out
    assert re.search(r"^ {15}\S+-weekly-strategic-memo-\S+\.log$", where, re.M), out
