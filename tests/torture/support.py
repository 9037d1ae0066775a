"""Shared machinery for the torture tests: scale, tick files, folder accounting, daemon launching."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from maestro_py.bus.store import REASON_SUFFIX
from maestro_py.bus.tick import Tick
from maestro_py.paths import Folder, Layout
from tests.fakes import REPO

ZYGOTE = Path(__file__).resolve().parent / "zygote.py"
# MAESTRO_TEST_FULL=1 (.ci/run sets it): the `slow` tests run too, and the scale defaults to 1.
FULL = os.environ.get("MAESTRO_TEST_FULL", "") not in ("", "0")
# Sizes of the torture runs (ticks, kills, rounds) are multiplied by this; 10 is the long variant by hand.
SCALE = float(os.environ.get("MAESTRO_TORTURE_SCALE") or (1 if FULL else 0.3))
# MAESTRO_TORTURE_EXEC=1: every daemon life is a cold `python -m maestro_py` (slower; for runs by hand).
EXEC = os.environ.get("MAESTRO_TORTURE_EXEC", "") not in ("", "0")
# On top of tests.fakes.daemon_env: drain for long on SIGTERM, retry at once, never refuse a big inbox.
TORTURE_ENV = {"MAESTRO_STOP_GRACE_SECONDS": "20", "MAESTRO_BACKOFF_SECONDS": "0", "MAESTRO_MAX_INBOX": "1000000"}


def new_tick(cadence: str, payload: dict[str, Any] | None = None) -> Tick:
    """A fresh tick exactly as `maestro enqueue` would write it (valid, with its id)."""
    now = datetime.now(timezone.utc)
    tick = Tick.new(cadence, now=now, source="torture", payload=payload)
    tick.record("enqueued", at=now, source="torture")
    return tick


def stage(ticks: list[Tick], staging: Path) -> list[Path]:
    """Write ticks into a staging folder on the same file system (fast: no fsync, no bus `tmp/`)."""
    staging.mkdir(parents=True, exist_ok=True)
    paths = []
    for tick in ticks:
        path = staging / tick.filename
        path.write_bytes(tick.to_bytes())
        paths.append(path)
    return paths


def publish(paths: list[Path], layout: Layout) -> None:
    """Deliver staged ticks into `inbox/`, each by one rename (what a trigger script does)."""
    inbox = layout.folder(Folder.INBOX)
    for path in paths:
        os.rename(path, inbox / path.name)


def stem(name: str) -> str:
    """Tick id of a file name in any state folder (`<id>.json` or `<id>@<owner>.json`)."""
    return name[:-5].split("@")[0] if name.endswith(".json") else name


def folder_ids(layout: Layout, folder: Folder) -> list[str]:
    """Ids of the tick files in a folder (quarantined files and their notes left out), with repeats."""
    path = layout.folder(folder)
    names = os.listdir(path)
    notes = {n[: -len(REASON_SUFFIX)] for n in names if n.endswith(REASON_SUFFIX)}
    return [stem(n) for n in names if not n.endswith(REASON_SUFFIX) and n not in notes]


def quarantined(layout: Layout) -> dict[str, dict[str, Any]]:
    """dlq/ quarantine notes by the name of the quarantined entry."""
    dlq = layout.folder(Folder.DLQ)
    out = {}
    for name in os.listdir(dlq):
        if name.endswith(REASON_SUFFIX):
            out[name[: -len(REASON_SUFFIX)]] = json.loads((dlq / name).read_text())
    return out


def runs_per_tick(count_file: Path) -> Counter[str]:
    """How many times fake claude ran for each tick id (from its CLAUDE_CODE_FAKE_COUNT lines)."""
    runs: Counter[str] = Counter()
    if count_file.exists():
        for line in count_file.read_text().splitlines():
            for part in line.split():
                if part.startswith("tick="):
                    runs[part[5:]] += 1
    return runs


def status_pid(layout: Layout) -> int | None:
    """The pid in the daemon's status file (None before it wrote one)."""
    try:
        return json.loads(layout.consumer_file.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def seeded_random(name: str) -> tuple[random.Random, int]:
    seed = int(os.environ.get("MAESTRO_TORTURE_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{name}: MAESTRO_TORTURE_SEED={seed}")
    return random.Random(seed), seed


class Launcher:
    """Starts daemon lives through `zygote.py` (pre-imported fork server); reaps everything they leave."""

    def __init__(self, *, exec_mode: bool = EXEC) -> None:
        self.exec_mode = exec_mode
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO)
        self.started: list[int] = []

    def _call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the launcher died")
        return json.loads(line)

    def start(self, layout: Layout, env: dict[str, str], stderr: Path, *args: str) -> int:
        pid = self._call(cmd="spawn", args=["--root", str(layout.root), "run", *args], env=env, cwd=str(REPO),
                         stderr=str(stderr), exec=self.exec_mode)["pid"]
        self.started.append(pid)
        return pid

    def wait(self, pid: int, timeout: float) -> int | None:
        """The daemon's exit code (negative: killed by that signal), or None if it still runs."""
        return self._call(cmd="wait", pid=pid, timeout=timeout)["code"]

    def children(self) -> list[int]:
        return self._call(cmd="children")["children"]

    def settle_children(self, timeout: float = 15) -> list[int]:
        """Wait until every process left behind (daemons, orphaned sub-sessions) is gone; returns stragglers."""
        deadline = time.monotonic() + timeout
        while (left := self.children()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def close(self) -> None:
        try:
            for pid in self.children():  # only processes this launcher started or adopted
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.settle_children(5)
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (BrokenPipeError, RuntimeError, OSError):
            self.proc.kill()
            self.proc.wait(timeout=10)
