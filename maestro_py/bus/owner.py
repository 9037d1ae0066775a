"""Who holds a claim: a pid plus that process's start time, so a reused pid is never mistaken for it.

psutil is imported when a process is first looked at, not with the module: every `Bus` has an owner, but the
one `maestro enqueue` (run by cron) makes never claims, so it never asks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_TOKEN_RE = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class Owner:
    """A process identity that survives pid reuse."""

    pid: int
    started_cs: int  # process start time in centiseconds since the epoch (the kernel's own resolution)

    @classmethod
    def current(cls) -> "Owner":
        """The calling process."""
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> "Owner":
        """The process `pid` as it is now (raises psutil.NoSuchProcess if there is none)."""
        import psutil

        return cls(pid, round(psutil.Process(pid).create_time() * 100))

    @property
    def token(self) -> str:
        """The owner as it appears in a claimed file's name."""
        return f"{self.pid}-{self.started_cs}"

    @classmethod
    def parse(cls, token: str) -> "Owner | None":
        """Inverse of `token`; None for anything else."""
        match = _TOKEN_RE.match(token)
        return cls(int(match[1]), int(match[2])) if match else None

    def is_alive(self) -> bool:
        """True while this exact process runs (a zombie counts as gone)."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(round(proc.create_time() * 100) - self.started_cs) <= 1
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return True  # it exists and is someone else's: fail safe, do not steal its claims
