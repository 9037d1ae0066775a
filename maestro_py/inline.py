"""Calling inline handlers and guards: the built-in `noop`, a `module:function`, or a shell-free command
(started here; its process group is killed through `proctree`, the one module that signals processes)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Literal

from maestro_py import loader
from maestro_py.handler_spec import NOOP, parse

DETAIL_CHARS = 1024

Kind = Literal["handler", "guard"]


@dataclass(frozen=True)
class HandlerResult:
    """The outcome of one handler or guard call."""

    ok: bool  # handler succeeded / guard said "escalate"
    detail: str  # short text for the event log: return value repr or the tail of the output
    error: str | None  # the call itself failed (raised, timed out, not found); distinct from guard=false
    interrupted: bool = False  # cut short because the daemon is stopping: not the tick's fault


def call(
    spec: str,
    tick: dict[str, Any],
    *,
    root: Path,
    env: dict[str, str],
    timeout: float,
    kind: Kind = "handler",
    cancelled: Callable[[], bool] = lambda: False,
) -> HandlerResult:
    """Run a handler or guard for `tick` and report how it went; never raises for the callee's faults.

    `cancelled` is polled while the call runs: when it turns true (the daemon is stopping) the call is cut
    short and the result says `interrupted`.
    """
    try:
        parsed = parse(spec)
    except ValueError as exc:
        return HandlerResult(False, "", f"invalid {kind} {spec!r}: {exc}")
    if parsed.form == "noop":
        return HandlerResult(True, NOOP, None)
    if parsed.form == "function":
        assert parsed.module is not None and parsed.function is not None
        return _call_function(parsed.module, parsed.function, tick, root=root, timeout=timeout, kind=kind,
                              cancelled=cancelled)
    return _run_command(parsed.argv, tick, root=root, env=env, timeout=timeout, kind=kind, cancelled=cancelled)


def run_command(argv: tuple[str, ...], data: dict[str, Any], *, root: Path, env: dict[str, str],
                timeout: float) -> HandlerResult:
    """Run a shell-free command with `data` as JSON on stdin, its process group ended at `timeout` (the
    alerts' MAESTRO_NOTIFY_COMMAND uses the same handling as a command handler)."""
    return _run_command(tuple(argv), data, root=root, env=env, timeout=timeout, kind="handler",
                        cancelled=lambda: False)


# -- module:function ----------------------------------------------------------

def _call_function(
    module: str, function: str, tick: dict[str, Any], *, root: Path, timeout: float, kind: Kind,
    cancelled: Callable[[], bool],
) -> HandlerResult:
    global _WORKER
    stuck = [t for t in _ABANDONED if t.is_alive()]
    _ABANDONED[:] = stuck
    if len(stuck) >= MAX_ABANDONED:
        # Python cannot kill a thread: past this many stuck calls, starting more would only pile them up.
        return HandlerResult(False, "", f"{len(stuck)} earlier module:function calls are still stuck in background "
                                        "threads; not starting another (fix the helper, then restart the daemon)")
    outcome = _Outcome()

    def target() -> None:
        # Importing happens here too, so a helper that hangs at import time is bounded by the timeout.
        try:
            fn = loader.load(module, function, root)
        except BaseException as exc:  # noqa: BLE001 - any import-time failure is the helper's, not ours
            outcome.load_error = exc
            return
        try:
            outcome.value = fn(json.loads(json.dumps(tick)))  # its own copy (JSON's C codec: ~5× deepcopy's speed)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a helper is a failure, not our exit
            outcome.raised = exc

    worker = _WORKER = _WORKER or _Worker()  # a worker is dropped when a call overruns (below)
    finished = worker.run(target, timeout, cancelled)
    if finished is not True:
        # Python cannot kill a thread: the call is abandoned (a daemon thread), not stopped, and the next
        # call gets a fresh worker. At most MAX_ABANDONED of them may pile up (above).
        _WORKER = None
        _ABANDONED.append(worker.thread)
        if finished is None:
            return HandlerResult(False, "", "interrupted: the daemon is stopping", interrupted=True)
        return HandlerResult(False, "", f"timed out after {timeout:g}s (left running in a background thread)")
    if outcome.load_error is not None:
        error = f"cannot load {module}:{function}: {_describe(outcome.load_error)}"
        return HandlerResult(False, _traceback(outcome.load_error), error)
    if outcome.raised is not None:
        return HandlerResult(False, _traceback(outcome.raised), _describe(outcome.raised))
    value = outcome.value
    detail = _head(repr(value))
    if kind == "guard":
        return HandlerResult(bool(value), detail, None)
    if value is False:
        return HandlerResult(False, detail, "handler returned False")
    return HandlerResult(True, detail, None)


class _Worker:
    """One reusable daemon thread for `module:function` calls: starting a thread per call cost ~0.3 ms of
    every inline tick. A call that overruns its timeout keeps its thread, which is then abandoned."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="maestro-handler", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()

    def run(self, job: Callable[[], None], timeout: float, cancelled: Callable[[], bool]) -> bool | None:
        """Run `job` on the worker: True if it finished, False if not within `timeout` s, None if cancelled."""
        done = threading.Event()
        self._jobs.put((job, done))
        deadline = time.monotonic() + timeout
        while not done.wait(min(CANCEL_POLL, max(0.0, deadline - time.monotonic()))):
            if cancelled():
                return None
            if time.monotonic() >= deadline:
                return False
        return True


_WORKER: _Worker | None = None
_ABANDONED: list[threading.Thread] = []  # workers left running a call that overran or was cancelled
MAX_ABANDONED = 4
CANCEL_POLL = 0.1  # seconds between looks at `cancelled` while a handler runs


@dataclass
class _Outcome:
    value: Any = None
    raised: BaseException | None = None
    load_error: BaseException | None = None


# -- commands -----------------------------------------------------------------


def _run_command(
    argv: tuple[str, ...],
    tick: dict[str, Any],
    *,
    root: Path,
    env: dict[str, str],
    timeout: float,
    kind: Kind,
    cancelled: Callable[[], bool],
) -> HandlerResult:
    # Imported here, not at the top: the registry checks handler specs with this module, and `maestro
    # enqueue` (run by cron) loads the registry but never runs a command.
    from maestro_py.session import proctree

    if not root.is_dir():
        return HandlerResult(False, "", f"agent root is not a directory: {root}")
    payload = json.dumps(tick, default=str).encode()
    # Output goes to a file, not a pipe: no size limit in memory, and a straggling grandchild that keeps
    # the descriptor open cannot make us wait.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=root,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout kills its children too
                close_fds=True,
            )
        except FileNotFoundError:
            return HandlerResult(False, "", f"command not found: {argv[0]}")
        except PermissionError:
            return HandlerResult(False, "", f"command not executable: {argv[0]}")
        except OSError as exc:
            return HandlerResult(False, "", f"cannot start {argv[0]}: {exc.strerror or exc}")
        try:
            ended = _wait_command(proc, payload, timeout, cancelled)
        except BaseException:
            proctree.kill_group(proc.pid)
            proc.wait()
            raise
        if ended is not True:
            proctree.kill_group(proc.pid)
            proc.communicate()
            if ended is None:
                return HandlerResult(False, _read_tail(out), "interrupted: the daemon is stopping", interrupted=True)
            return HandlerResult(False, _read_tail(out), f"timed out after {timeout:g}s")
        detail = _read_tail(out)
    code = proc.returncode
    if code == 0:
        return HandlerResult(True, detail, None)
    if code == 1:
        # For a guard, exit 1 is the answer "nothing to do"; for a handler it is a plain failure.
        return HandlerResult(False, detail, None if kind == "guard" else "exited with status 1")
    if code < 0:
        return HandlerResult(False, detail, f"killed by signal {_signal_name(-code)}")
    return HandlerResult(False, detail, f"exited with status {code}")


def _wait_command(proc: subprocess.Popen[bytes], payload: bytes, timeout: float,
                  cancelled: Callable[[], bool]) -> bool | None:
    """Feed `proc` its input and wait: True if it exited, False on timeout, None if cancelled meanwhile."""
    deadline = time.monotonic() + timeout
    data: bytes | None = payload
    while True:
        try:
            proc.communicate(data, timeout=min(CANCEL_POLL, max(0.0, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            data = None  # already handed over; a retried communicate() continues where it stopped
        if cancelled():
            return None
        if time.monotonic() >= deadline:
            return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


# -- detail text --------------------------------------------------------------


def _read_tail(out: IO[bytes]) -> str:
    out.seek(0, os.SEEK_END)
    size = out.tell()
    out.seek(max(0, size - DETAIL_CHARS * 4))
    return _tail(out.read().decode("utf-8", errors="replace").lstrip("\ufffd"))


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= DETAIL_CHARS else "…" + text[-(DETAIL_CHARS - 1) :]


def _head(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


def _traceback(exc: BaseException) -> str:
    return _tail("".join(traceback.format_exception(exc)))


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
