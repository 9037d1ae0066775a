"""OS process-tree operations: snapshots, ending trees, reaping adopted orphans.

This is the only module that signals processes (the runner and the inline commands call it). It never reaps a process it was not asked to reap:
`end_tree` waits by watching, not by `waitpid`, so a `subprocess.Popen` that owns a child still gets
that child's real exit status.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

import psutil

PR_SET_CHILD_SUBREAPER = 36
# After SIGKILL a process normally vanishes in milliseconds; this only bounds a stuck (D-state) one.
KILL_WAIT = 2.0
_POLL = 0.02

PhaseHook = Callable[[str, list[int]], None]


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process instead of init (Linux only); True on success."""
    libc = _libc()
    if libc is None:
        return False
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def interrupt(pid: int) -> bool:
    """SIGINT to one process (the CLI answers it by ending its own tools); False if it is gone."""
    try:
        os.kill(pid, signal.SIGINT)
        return True
    except ProcessLookupError:
        return False


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group (an inline command started in a session of its own)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def snapshot(pid: int) -> list[psutil.Process]:
    """The process `pid` followed by all its current descendants; [] if it is gone."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    return [root, *_descendants(root)]


def descendants(proc: int | psutil.Process) -> list[psutil.Process]:
    """All current descendants of a pid or process (not itself); [] if it is gone or its pid was reused."""
    if isinstance(proc, psutil.Process):
        return _descendants(proc)
    return snapshot(proc)[1:]


def is_running(proc: psutil.Process) -> bool:
    """True if `proc` (same pid and start time) exists and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def end_tree(procs: Iterable[psutil.Process], grace: float, *, on_phase: PhaseHook | None = None) -> list[int]:
    """SIGTERM `procs`, wait up to `grace` s, SIGKILL survivors (and their new children); return the SIGKILLed pids.

    `on_phase(phase, pids)` is called with "term" and then "kill" and the pids actually signalled.
    """
    targets = _unique(procs)
    termed = [p for p in targets if _send(p, signal.SIGTERM)]
    if termed and on_phase is not None:
        on_phase("term", [p.pid for p in termed])
    survivors = wait_gone(termed, grace)
    if not survivors:
        return []
    # Children forked during the grace period were never in the list; they go down with their parents.
    survivors = _unique([*survivors, *(c for p in survivors for c in _descendants(p))])
    killed = [p for p in survivors if _send(p, signal.SIGKILL)]
    if killed and on_phase is not None:
        on_phase("kill", [p.pid for p in killed])
    wait_gone(killed, KILL_WAIT)
    return [p.pid for p in killed]


def kill_now(procs: Iterable[psutil.Process]) -> list[int]:
    """SIGKILL every process in `procs` that still runs; return the pids signalled (does not wait)."""
    return [p.pid for p in _unique(procs) if _send(p, signal.SIGKILL)]


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s until every process has exited (a zombie counts); return the ones still running.

    Polls instead of `psutil.wait_procs`, which calls waitpid on our own children and so would steal
    their exit status from the `subprocess.Popen` that owns them.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    pending = [p for p in procs if is_running(p)]
    while pending and time.monotonic() < deadline:
        time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
        pending = [p for p in pending if is_running(p)]
    return pending


SESSION_MARK = "MAESTRO_SUBSESSION"  # in every sub-session's environment: "<daemon owner token>:<agent root>"
TICK_MARK = "MAESTRO_TICK"  # and "<tick id> <cadence>": whose run a process left behind was
PR_SET_PDEATHSIG = 1


def session_mark(root: str, owner: str) -> str:
    """The value of SESSION_MARK for a sub-session started by the daemon `owner` of `root`."""
    return f"{owner}:{root}"


def end_leftovers(root: str, owner: str) -> list[int]:
    """SIGKILL every process a previous daemon of `root` left running (marked with SESSION_MARK, inherited by
    the CLI's tools even where they started sessions of their own); return their pids.

    The daemon calls this at start-up, holding the root's lock, before stale claims go back to `inbox/`: a
    tick must never run again beside what is left of its last run.
    """
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            mark = proc.environ().get(SESSION_MARK)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        their_owner, _, their_root = (mark or "").partition(":")
        if their_root == root and their_owner != owner:
            found.append(proc)
    killed = kill_now(found)
    wait_gone(found, KILL_WAIT)
    return sorted(killed)


def die_with_parent(parent: int) -> None:
    """In a child between fork and exec (Linux): be SIGKILLed when the daemon (`parent`) dies, however it dies.

    Runs in the forked child, so it only calls into libc (loaded before the fork). If the daemon died
    before this took effect, the child ends itself rather than run unsupervised.
    """
    if _LIBC is None:
        return
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def reap_adopted(tracked: set[int]) -> list[tuple[int, str, str | None]]:
    """Reap every child of this process not in `tracked` (orphans adopted as subreaper): one that has exited (a
    zombie the CLI's tools leave after every normal run) is only reaped; a live one is SIGKILLed with its tree and
    reaped. (pid, command, "<tick id> <cadence>" of the run that left it, if known) of each live orphan killed:
    exited ones are no news.

    Only the daemon calls this, and `tracked` must hold every child it started itself (all live
    sub-sessions): any other direct child is an orphan a sub-session left behind.
    """
    try:
        me = psutil.Process()
        children = me.children()
    except psutil.Error:
        return []
    adopted = [c for c in children if c.pid not in tracked]
    live: list[tuple[psutil.Process, str, str | None]] = []
    for child in adopted:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                _reap(child.pid)
                continue
            live.append((child, " ".join(child.cmdline())[:200], _run_of(child)))
        except psutil.Error:
            _reap(child.pid)
    if not live:
        return []
    # Their own descendants stay children of theirs until they die, so take the whole trees now.
    trees = _unique([*(c for c, _, _ in live), *(d for c, _, _ in live for d in _descendants(c))])
    kill_now(trees)
    wait_gone(trees, KILL_WAIT)
    for child, _, _ in live:
        _reap(child.pid)
    # Grandchildren orphaned by the kill were reparented to us in the meantime: reap those too.
    for late in _children_not_in(me, tracked):
        _send(late, signal.SIGKILL)
        wait_gone([late], KILL_WAIT)
        _reap(late.pid)
    return sorted((c.pid, command, run) for c, command, run in live)


def _run_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(TICK_MARK)
    except (psutil.Error, OSError):
        return None


def _children_not_in(me: psutil.Process, tracked: set[int]) -> list[psutil.Process]:
    try:
        return [c for c in me.children() if c.pid not in tracked]
    except psutil.Error:
        return []


def _reap(pid: int) -> None:
    # WNOHANG: a child that is somehow still running must not block the daemon loop.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _send(proc: psutil.Process, sig: int) -> bool:
    """Signal `proc` unless it is gone or its pid was reused; True if the signal was delivered."""
    try:
        if not is_running(proc):
            return False
        proc.send_signal(sig)
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _unique(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for proc in procs:
        seen.setdefault(proc.pid, proc)
    return list(seen.values())


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # Declare the types: variadic prctl reads full unsigned longs, and default int promotion may not.
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.prctl.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()  # loaded once, before any fork: a forked child must not load libraries
