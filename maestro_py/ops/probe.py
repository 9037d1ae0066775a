"""What `maestro doctor`'s checks return (`Check`, `Level`) and what they may look at (`Probe`).

The outside world a check touches (HTTP, subprocesses, disk usage, time) comes in through `Probe`, so
tests run the checks against real files without the network.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from maestro_py.clock import Clock, SystemClock
from maestro_py.paths import Layout

# (url, headers, body, timeout) -> (HTTP status, response body); raises OSError when there is no answer.
HttpPost = Callable[[str, Mapping[str, str], bytes, float], tuple[int, bytes]]
# (argv, env, cwd, timeout) -> (exit code, stdout, stderr); raises subprocess.TimeoutExpired / OSError.
RunCommand = Callable[[list[str], Mapping[str, str], Path, float], tuple[int, str, str]]


class Level(str, enum.Enum):
    """How bad a finding is; any FAIL makes `maestro doctor` exit 1."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One finding: a check's name, its level and a one-line detail."""

    name: str
    level: Level
    detail: str

    def line(self) -> str:
        """The human-readable line `maestro doctor` prints."""
        return f"{self.level.value:<4}  {self.name:<11} {self.detail}"

    def to_json(self) -> dict[str, str]:
        """The check as `--json` prints it."""
        return {"name": self.name, "level": self.level.value, "detail": self.detail}


def urllib_post(url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> tuple[int, bytes]:
    """POST with urllib; an HTTP error status is returned, not raised (no answer raises OSError)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    host = urlsplit(url).hostname or ""
    # A loopback endpoint (the demo's fake, a local gateway) must never be sent through a proxy.
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read(65536)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(65536)


def run_command(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """Run a short command and capture its output."""
    proc = subprocess.run(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


@dataclass
class Probe:
    """What the checks may look at: the root, the daemon's environment, time and the outside world."""

    layout: Layout
    env: Mapping[str, str]
    clock: Clock = field(default_factory=SystemClock)
    http_post: HttpPost = urllib_post
    run: RunCommand = run_command
    disk_usage: Callable[[Path], Any] = shutil.disk_usage
    offline: bool = False

    def now(self) -> datetime:
        """The current time from the injected clock."""
        return self.clock.now()
