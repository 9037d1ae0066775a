"""Spawn and supervise `claude --print` sub-sessions (their log files: runlog.py; their trees: proctree.py)."""

from __future__ import annotations

import functools
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import psutil

from maestro_py.errors import SpawnError
from maestro_py.redact import Redactor
from maestro_py.session import enforce, limits as run_limits, proctree, runlog
from maestro_py.session.command import SpawnSpec
from maestro_py.session.metering import CliResult, parse_result

# How often the watcher re-reads the child's descendants. The CLI's Bash tool escapes into its own
# session, so a process-group kill misses it; only a remembered pid lets us end it after the CLI dies.
REFRESH_INTERVAL = 0.5
_POLL = 0.05  # exit detection latency; a stop() request wakes the watcher at once regardless
FIRST_REFRESH = 0.1


@dataclass(frozen=True)
class RunOutcome:
    """How one sub-session ended and what it reported."""

    pid: int
    exit_code: int | None
    signal: int | None
    timed_out: bool
    stopped: bool
    duration_ms: int
    result: CliResult | None
    tail: str
    killed_pids: list[int] = field(default_factory=list)
    truncated: bool = False  # its output passed the log cap, so it was ended (its log is cut to the cap)
    log_cap: int | None = None  # that cap in bytes (SpawnSpec.log_max_bytes)
    timeout_s: float | None = None  # the limit it ran under (SpawnSpec.timeout)
    breach: str | None = None  # it failed in a way that says it hit its resource limits (`limits.Limits.breach`)

    @property
    def ok(self) -> bool:
        """True only for a clean exit with a parsed, non-error result, not ended for its output (nor silent:
        no result text in zero turns, seen under launchd, is `unknown`; see `failures.classify`)."""
        r = self.result
        return self.exit_code == 0 and r is not None and r.is_error is False and not self.truncated \
            and (bool((r.text or "").strip()) or r.raw.get("num_turns") != 0)


class SubSession(Protocol):
    """Handle of one running child."""

    pid: int

    def poll(self) -> RunOutcome | None:
        """The outcome if the run has finished (logs processed), else None; never blocks."""

    def wait(self, timeout: float | None = None) -> RunOutcome | None:
        """Block until the outcome is ready or `timeout` s pass (then None)."""

    def stop(self, grace: float | None = None) -> None:
        """Begin ending the whole tree (SIGTERM, SIGKILL after `grace`); returns at once."""

    def kill(self) -> None:
        """SIGKILL the whole tree now."""


class Spawner(Protocol):
    """Starts sub-sessions; the daemon's only way to run work."""

    def spawn(self, spec: SpawnSpec) -> SubSession:
        """Start `spec` and return its handle; raises SpawnError if it cannot start."""


class ProcessSpawner:
    """The real spawner: one OS process per sub-session, watched by one thread."""

    def __init__(self, on_exit: Callable[[], None] | None = None, redactor: Redactor | None = None) -> None:
        self._on_exit = on_exit
        self._redactor = redactor or Redactor()
        self._lock = threading.Lock()
        self._live: dict[int, ProcessSession] = {}

    def spawn(self, spec: SpawnSpec) -> ProcessSession:
        """Start `spec`; raises SpawnError with a one-line reason if a log cannot be opened or exec fails."""
        if not spec.argv:
            raise SpawnError("cannot start a sub-session: empty argv")
        enforce.materialise(spec.files)  # its settings file: a run never starts without the policy it was given
        out_fd, err_fd, offsets = runlog.open_logs(spec)
        try:
            with runlog.prompt_file(spec.stdin) as prompt:
                try:
                    popen = subprocess.Popen(
                        spec.argv,
                        env=spec.env,
                        cwd=spec.cwd,
                        stdin=prompt,
                        stdout=out_fd,
                        stderr=err_fd,
                        close_fds=True,
                        # Own session: a Ctrl-C on the daemon's terminal must not reach it; the daemon decides.
                        start_new_session=True,
                        # Dies with the daemon, even a SIGKILLed one (Linux): no run goes on unsupervised.
                        preexec_fn=functools.partial(run_limits.in_child, os.getpid(), spec.limits),
                    )
                except OSError as exc:
                    raise runlog.exec_error(spec, exc) from exc
        except BaseException:
            runlog.close_fds(out_fd, err_fd)
            for path in runlog.log_paths(spec):
                runlog.delete_if_empty(path)
            raise
        # The child holds its own copies; ours would only keep the files open.
        runlog.close_fds(out_fd, err_fd)
        redactors = [self._redactor, Redactor(spec.env)]
        session = ProcessSession(popen, spec, offsets, redactors, self._finished)
        with self._lock:
            self._live[session.pid] = session
        session._start()
        return session

    def live_pids(self) -> set[int]:
        """Pids of children not yet reaped: the live cap counts them and `reap_adopted` must spare them."""
        with self._lock:
            return set(self._live)

    def _finished(self, session: ProcessSession) -> None:
        with self._lock:
            self._live.pop(session.pid, None)
        if self._on_exit is not None:
            self._on_exit()


class _Waker:
    """What the watcher sleeps on: the child's exit (a pidfd, Linux) or a stop()/kill() request.

    Without a pidfd the watcher polls every `_POLL` s; with one it wakes the moment the child exits, so a
    finished run is settled without a polling delay.
    """

    def __init__(self, pid: int) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()  # set() from another thread must never write to a closed (reused) fd
        self._fds: tuple[int, int, int] | None = None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds = (pidfd, read_fd, write_fd)

    def set(self) -> None:
        self._event.set()
        with self._lock:
            if self._fds is not None:
                try:
                    os.write(self._fds[2], b"!")
                except OSError:
                    pass

    def wait(self, timeout: float) -> None:
        if self._fds is None:
            self._event.wait(min(_POLL, timeout))
            return
        if not self._event.is_set():
            select.select(self._fds[:2], [], [], timeout)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, None
        for fd in fds or ():
            try:
                os.close(fd)
            except OSError:
                pass


class ProcessSession:
    """A running `claude` child and the thread that supervises it (timeout, stop, orphans, logs)."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        spec: SpawnSpec,
        offsets: dict[Path, int],
        redactors: list[Redactor],
        finished: Callable[[ProcessSession], None],
    ) -> None:
        self.pid = popen.pid
        self._popen = popen
        self._spec = spec
        self._offsets = offsets
        self._redactors = redactors
        self._finished = finished
        self._started = time.monotonic()
        self._ended: float | None = None
        self._root: psutil.Process | None = _process(popen.pid)
        self._lock = threading.Lock()
        self._wake = _Waker(popen.pid)
        self._done = threading.Event()
        self._outcome: RunOutcome | None = None
        self._stop_grace: float | None = None  # set once by the first stop()/kill()
        self._remembered: dict[int, psutil.Process] = {}
        self._killed: set[int] = set()
        self._root_killed = False  # kill() signalled the root itself
        self._truncated = False  # its output passed the log cap and the watcher ended it
        self._thread = threading.Thread(target=self._watch, name=f"maestro-watch-{self.pid}", daemon=True)

    def poll(self) -> RunOutcome | None:
        """The outcome if the run has finished (logs processed), else None; never blocks."""
        return self._outcome if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> RunOutcome | None:
        """Block until the outcome is ready or `timeout` s pass (then None)."""
        self._done.wait(timeout)
        return self.poll()

    def stop(self, grace: float | None = None) -> None:
        """Begin ending the whole tree (SIGTERM, SIGKILL after `grace`); returns at once. Idempotent."""
        with self._lock:
            if self._done.is_set() or self._stop_grace is not None:
                return
            self._stop_grace = self._spec.grace if grace is None else max(0.0, grace)
        self._wake.set()

    def kill(self) -> None:
        """SIGKILL the whole tree now, from the calling thread. Idempotent."""
        with self._lock:
            if self._done.is_set():
                return
            self._stop_grace = 0.0
            procs = self._tree()
        # The watcher may be inside a grace wait: signal here so "now" means now.
        pids = proctree.kill_now(procs)
        with self._lock:
            self._root_killed = self._root_killed or self.pid in pids
        self._note_killed(pids)
        self._wake.set()

    # -- watcher thread ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        timed_out = stopped = False
        try:
            timed_out, stopped = self._supervise()
        except BaseException:
            # Never leave a child running unsupervised: the daemon would lose count of it.
            self._abandon()
            raise
        finally:
            # Whatever failed above, waiters must get an outcome and the spawner must forget the pid.
            try:
                self._outcome = self._build_outcome(timed_out, stopped)
            except Exception:
                self._outcome = self._bare_outcome(timed_out, stopped)
                raise
            finally:
                self._done.set()
                self._finished(self)

    def _supervise(self) -> tuple[bool, bool]:
        """Run until the child exits; end its tree on timeout or stop(); then end orphans it left."""
        deadline = self._started + self._spec.timeout
        # The first tree scan waits a moment: a child that has just started has no descendants yet, and a
        # psutil walk costs milliseconds a short run should not pay. (Timeouts and stops snapshot anyway.)
        next_refresh = time.monotonic() + FIRST_REFRESH
        timed_out = stopped = False
        while self._popen.poll() is None:
            with self._lock:
                grace = self._stop_grace
            now = time.monotonic()
            if grace is not None:
                stopped = True
                self._end(grace)
                break
            if now >= deadline:
                timed_out = True
                self._end(self._spec.grace)
                break
            if runlog.over_cap(self._spec, self._offsets):
                self._truncated = True  # ended as for a timeout: a child printing forever must not fill the disk
                self._end(self._spec.grace)
                break
            if now >= next_refresh:
                self._refresh()
                next_refresh = now + REFRESH_INTERVAL
            self._wake.wait(min(runlog.CHECK_INTERVAL, max(0.0, next_refresh - now), max(0.0, deadline - now)))
        else:
            # kill() from another thread may have ended it before this loop noticed the request.
            with self._lock:
                stopped = self._root_killed
        self._popen.wait()
        self._ended = time.monotonic()
        self._wake.close()
        self._end_orphans()
        return timed_out, stopped

    def _refresh(self) -> None:
        found = proctree.descendants(self.pid)
        with self._lock:
            # Forget exited ones so a long run that spawns many short tools stays small.
            live = {pid: p for pid, p in self._remembered.items() if proctree.is_running(p)}
            for proc in found:
                known = live.get(proc.pid)
                if known is None or not proctree.is_running(known):
                    live[proc.pid] = proc
            self._remembered = live

    def _tree(self) -> list[psutil.Process]:
        """Root, current descendants and remembered ones (which may have escaped); caller holds the lock."""
        procs = proctree.snapshot(self.pid) if self._root is not None and proctree.is_running(self._root) else []
        # A fresh psutil.Process for the root could be a reused pid after it was reaped; use the original.
        procs = [self._root if p.pid == self.pid and self._root is not None else p for p in procs]
        return [*procs, *self._escaped()]

    def _escaped(self) -> list[psutil.Process]:
        """Remembered descendants still running, with their own current descendants; caller holds the lock."""
        alive = [p for p in self._remembered.values() if proctree.is_running(p)]
        # Once the CLI is gone, a tool's children hang off the tool, not off the CLI.
        return [*alive, *(d for p in alive for d in proctree.descendants(p))]

    def _end(self, grace: float) -> None:
        if self._spec.interrupt_first > 0 and self._popen.poll() is None:
            if proctree.interrupt(self.pid):
                try:
                    self._popen.wait(timeout=self._spec.interrupt_first)
                except subprocess.TimeoutExpired:
                    pass
        with self._lock:
            procs = self._tree()
        proctree.end_tree(procs, grace, on_phase=lambda _phase, pids: self._note_killed(pids))

    def _end_orphans(self) -> None:
        """After the CLI exits, anything it left running (remembered descendants) is an orphan: end it."""
        with self._lock:
            leftovers = self._escaped()
        if leftovers:
            proctree.end_tree(leftovers, self._spec.grace, on_phase=lambda _phase, pids: self._note_killed(pids))

    def _abandon(self) -> None:
        try:
            with self._lock:
                procs = self._tree()
            self._note_killed(proctree.kill_now(procs))
            self._popen.wait(timeout=proctree.KILL_WAIT)
        except Exception:
            pass

    def _note_killed(self, pids: list[int]) -> None:
        with self._lock:
            self._killed.update(p for p in pids if p != self.pid)

    # -- outcome ----------------------------------------------------------------------------------

    def _build_outcome(self, timed_out: bool, stopped: bool) -> RunOutcome:
        # Logs are redacted and capped as streams and read back from their ends: a run printing gigabytes
        # costs the daemon a few MiB.
        stdout, tail = runlog.settle_run(self._spec, self._offsets, self._redactors, self._truncated)
        outcome = replace(self._bare_outcome(timed_out, stopped), result=parse_result(stdout), tail=tail)
        hit = self._spec.limits is not None and not (outcome.ok or timed_out or stopped)  # its limits, if it failed
        return replace(outcome, breach=self._spec.limits.breach(outcome.signal, tail)) if hit else outcome

    def _bare_outcome(self, timed_out: bool, stopped: bool) -> RunOutcome:
        """The outcome from process facts alone (no logs read)."""
        returncode = self._popen.returncode
        ended = self._ended if self._ended is not None else time.monotonic()
        with self._lock:
            killed = sorted(self._killed)
        return RunOutcome(
            pid=self.pid,
            exit_code=returncode if returncode is not None and returncode >= 0 else None,
            signal=-returncode if returncode is not None and returncode < 0 else None,
            timed_out=timed_out,
            stopped=stopped and not timed_out,
            duration_ms=int((ended - self._started) * 1000),
            result=None,
            tail="",
            killed_pids=killed,
            truncated=self._truncated,
            log_cap=self._spec.log_max_bytes,
            timeout_s=self._spec.timeout,
        )


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
