"""Whether the CLI's sandbox can run here: on Linux `bwrap` and `socat` on the run's PATH, and a sandboxed `true`
that actually runs (a kernel or AppArmor policy may forbid the user namespaces bubblewrap needs); on macOS
`sandbox-exec`. One answer per PATH, remembered for a minute: the daemon asks before every run that needs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

TTL = 60.0
PROBE_TIMEOUT = 5.0
APPARMOR_USERNS = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")


@dataclass(frozen=True)
class Sandbox:
    """The answer: `problem` None when it runs; else why not, and how to fix it."""

    problem: str | None
    fix: str = ""
    how: str = ""  # what runs it (for doctor): "bubblewrap (/usr/bin/bwrap) and socat"

    @property
    def ready(self) -> bool:
        return self.problem is None


Runner = Callable[[list[str], float], int]


def _run(argv: list[str], timeout: float) -> int:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=timeout, check=False).returncode


def probe(env: Mapping[str, str], *, platform: str = sys.platform, run: Runner = _run) -> Sandbox:
    """Look now (no memory): what `available` remembers."""
    path = env.get("PATH", "")
    if platform == "darwin":
        found = shutil.which("sandbox-exec", path=path)
        return Sandbox(None, how=f"Seatbelt ({found})") if found else Sandbox(
            "sandbox-exec is not on PATH", "it ships with macOS: put /usr/bin on the service's PATH")
    if not platform.startswith("linux"):
        return Sandbox(f"the CLI has no sandbox on {platform}", 'set sandbox = "off" for its cadences')
    bwrap, socat = shutil.which("bwrap", path=path), shutil.which("socat", path=path)
    missing = [name for name, found in (("bwrap", bwrap), ("socat", socat)) if not found]
    if missing:
        return Sandbox(f"{' and '.join(missing)} not on the run's PATH",
                       "install them (Debian/Ubuntu: apt-get install bubblewrap socat; Fedora: dnf install "
                       "bubblewrap socat), or put their folder on PATH in .env")
    argv = [str(bwrap), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--die-with-parent",
            "true"]
    try:
        code = run(argv, PROBE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        code, said = -1, str(exc)
    else:
        said = f"exit {code}"
    if code == 0:
        return Sandbox(None, how=f"bubblewrap ({bwrap}) and socat ({socat})")
    if _apparmor_restricts():
        return Sandbox(f"bwrap cannot create a user namespace ({said}): AppArmor restricts unprivileged user "
                       "namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)",
                       "add an AppArmor profile for bwrap allowing userns (Ubuntu 24.04: see the CLI's sandboxing "
                       "docs), or sysctl kernel.apparmor_restrict_unprivileged_userns=0")
    return Sandbox(f"a sandboxed `true` failed under bwrap ({said})",
                   "check that user namespaces are enabled (sysctl user.max_user_namespaces > 0, "
                   "kernel.unprivileged_userns_clone = 1)")


def _apparmor_restricts() -> bool:
    try:
        return APPARMOR_USERNS.read_text().strip() == "1"
    except OSError:
        return False


_memory: dict[str, tuple[float, Sandbox]] = {}


def available(env: Mapping[str, str], *, now: Callable[[], float] = time.monotonic) -> Sandbox:
    """The answer for this PATH, looked at most once a minute."""
    key = env.get("PATH", "")
    seen = _memory.get(key)
    if seen is not None and now() - seen[0] < TTL:
        return seen[1]
    answer = probe(env)
    _memory[key] = (now(), answer)
    return answer
