"""Per-run resource limits (a cadence's `memory_mb` and `max_processes`), and how a breach is told apart.

Where a systemd user manager runs, a run starts in a transient scope (`systemd-run --user --scope`) with
`MemoryMax` and `TasksMax`: the kernel counts the whole tree. Elsewhere the child takes rlimits before exec:
`RLIMIT_AS` (address space, per process of the run) and `RLIMIT_NPROC`, which the kernel counts per user, so it
is set to the user's processes at the start plus `max_processes` (root is not held by it: `doctor` says so).
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from maestro_py.session import proctree

# What a run's last stderr lines say when it hit a limit (a process that could not fork or allocate).
_MEMORY_WORDS = ("out of memory", "cannot allocate memory", "enomem", "allocation failed", "xmalloc", "memoryerror",
                 "oom")
_PROCESS_WORDS = ("resource temporarily unavailable", "fork: retry", "eagain", "cannot fork")


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None
    max_processes: int | None
    nproc_base: int = 0  # the user's processes when the run starts (RLIMIT_NPROC counts them all)
    in_child: bool = True  # False: a systemd scope holds them (`scope_argv`), nothing to set before exec

    def apply(self) -> None:
        """Set the rlimits in the child (between fork and exec); only lowers, never raises a hard limit."""
        if not self.in_child:
            return
        if self.memory_mb is not None:
            _lower(resource.RLIMIT_AS, self.memory_mb << 20)
        if self.max_processes is not None:
            _lower(resource.RLIMIT_NPROC, self.nproc_base + self.max_processes)

    def breach(self, signal: int | None, tail: str) -> str | None:
        """Why a run that failed looks like it hit these limits (its signal, or its last words), else None."""
        text = tail.lower()
        if self.memory_mb is not None and (signal in (6, 9, 11) or any(w in text for w in _MEMORY_WORDS)):
            return f"resource limit reached: memory_mb = {self.memory_mb}"
        if self.max_processes is not None and any(w in text for w in _PROCESS_WORDS):
            return f"resource limit reached: max_processes = {self.max_processes}"
        return None


def in_child(parent: int, limits: Limits | None) -> None:
    """Run in the child between fork and exec: die with the daemon (Linux), then take the run's limits."""
    if sys.platform.startswith("linux"):
        proctree.die_with_parent(parent)
    if limits is not None:
        limits.apply()


def _lower(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (cap, hard))


def of(memory_mb: int | None, max_processes: int | None) -> Limits | None:
    """The limits for one run now (None: the cadence sets none)."""
    if memory_mb is None and max_processes is None:
        return None
    base = 0
    if max_processes is not None:
        try:
            uid = os.getuid()
            base = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)
        except psutil.Error:
            base = 0
    return Limits(memory_mb, max_processes, base)


def user_manager(env: Mapping[str, str]) -> bool:
    """Whether a systemd user manager runs for this user (then a run gets a scope, not rlimits)."""
    runtime = env.get("XDG_RUNTIME_DIR", "")
    return bool(runtime) and Path(runtime, "systemd", "private").exists() and shutil.which("systemd-run") is not None


def scope_argv(limits: Limits) -> list[str]:
    """`systemd-run --user --scope` with the limits as properties: it execs the command in place (same pid)."""
    props = []
    if limits.memory_mb is not None:
        props += ["-p", f"MemoryMax={limits.memory_mb}M"]
    if limits.max_processes is not None:
        props += ["-p", f"TasksMax={limits.max_processes}"]
    return ["systemd-run", "--user", "--scope", "--quiet", "--collect", *props, "--"]


def enforced_by(env: Mapping[str, str]) -> str:
    """How limits are enforced here, in words (`doctor`)."""
    if user_manager(env):
        return "a systemd scope per run (MemoryMax, TasksMax)"
    if os.getuid() == 0:
        return "rlimits (address space per process); max_processes is not enforced for root without a user manager"
    return "rlimits (address space per process, processes per user)"
