"""What the `maestro service` tests share: an agent root like the bundled example, `systemd-analyze verify`, a
stand-in launchctl/systemctl that logs its calls, and the edits an operator makes to `cadences.toml`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import write_agent

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "agent"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
PY = sys.executable  # a real interpreter: `systemd-analyze verify` checks that ExecStart= exists


def example_agent(root: Path, toml: str | None = None) -> Path:
    """An agent root with the example's prompt files and registry (or `toml`)."""
    prompts = {path.stem: path.read_text() for path in (EXAMPLE / "cadences").glob("*.md")}
    return write_agent(root, toml if toml is not None else (EXAMPLE / "cadences.toml").read_text(), prompts).root


def verify(paths: list[Path], *, user: bool, tmp: Path) -> None:
    """`systemd-analyze verify` must accept the units without a single warning."""
    env = dict(os.environ)
    args = [SYSTEMD_ANALYZE or "systemd-analyze", "verify", "--man=no"]
    if user:
        runtime = tmp / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.append("--user")
    result = subprocess.run([*args, *map(str, paths)], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr)


def fake_tool(folder: Path, name: str, log: Path, watch: Path, fail_on: str = "") -> None:
    """A stand-in launchctl/systemctl: logs its arguments and how many unit files exist at the time."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f"""#!/bin/sh
echo "$* [$(ls '{watch}' 2>/dev/null | wc -l | tr -d ' ')]" >> '{log}'
case "$1" in {fail_on or '__never__'}) exit 3;; esac
exit 0
""")
    script.chmod(0o755)


def drop_schedule(root: Path, cadence: str) -> None:
    """What the operator does in an editor: delete the `schedule` line of one cadence."""
    toml = (root / "cadences.toml").read_text()
    table = toml.index(f"[{cadence}]")
    start = toml.index("schedule", table)
    end = toml.index("\n", start)
    assert "[" not in toml[table + 1:start]  # still inside the same table
    (root / "cadences.toml").write_text(toml[:start] + toml[end + 1:])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file's inode and mtime: a rewrite changes them, even with the same content."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
