"""Calling inline handlers and guards: the built-in `noop`, a `module:function`, or a shell-free command
(started here; its process group is killed through `proctree`, the one module that signals processes)."""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Literal

NOOP = "noop"
FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
DETAIL_CHARS = 1024

Kind = Literal["handler", "guard"]
Form = Literal["noop", "function", "command"]


@dataclass(frozen=True)
class HandlerResult:
    """The outcome of one handler or guard call."""

    ok: bool  # handler succeeded / guard said "escalate"
    detail: str  # short text for the event log: return value repr or the tail of the output
    error: str | None  # the call itself failed (raised, timed out, not found); distinct from guard=false


@dataclass(frozen=True)
class Spec:
    """A parsed handler/guard string."""

    form: Form
    module: str | None = None
    function: str | None = None
    argv: tuple[str, ...] = ()


def parse(spec: str) -> Spec:
    """Classify `spec` as noop, `module:function` or a command; ValueError says why it is unusable."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("must be a non-empty string")
    text = spec.strip()
    if text == NOOP:
        return Spec("noop")
    if FUNCTION_RE.match(text):
        module, function = text.split(":")
        return Spec("function", module=module, function=function)
    try:
        argv = shlex.split(text)
    except ValueError as exc:  # unbalanced quotes, trailing backslash
        raise ValueError(f"cannot split command: {exc}") from None
    if not argv:
        raise ValueError("command is empty")
    return Spec("command", argv=tuple(argv))


def call(
    spec: str,
    tick: dict[str, Any],
    *,
    root: Path,
    env: dict[str, str],
    timeout: float,
    kind: Kind = "handler",
) -> HandlerResult:
    """Run a handler or guard for `tick` and report how it went; never raises for the callee's faults."""
    try:
        parsed = parse(spec)
    except ValueError as exc:
        return HandlerResult(False, "", f"invalid {kind} {spec!r}: {exc}")
    if parsed.form == "noop":
        return HandlerResult(True, NOOP, None)
    if parsed.form == "function":
        assert parsed.module is not None and parsed.function is not None
        return _call_function(parsed.module, parsed.function, tick, root=root, timeout=timeout, kind=kind)
    return _run_command(parsed.argv, tick, root=root, env=env, timeout=timeout, kind=kind)


# -- module:function ----------------------------------------------------------

_IMPORT_LOCK = threading.Lock()
# module name -> (root it came from, source file, (mtime_ns, size)) for modules imported from an agent root,
# so an edited helper is re-imported and a same-named helper from another root is not mistaken for it.
_ORIGINS: dict[str, tuple[Path, Path, tuple[int, int]]] = {}


def _call_function(
    module: str, function: str, tick: dict[str, Any], *, root: Path, timeout: float, kind: Kind
) -> HandlerResult:
    global _WORKER
    outcome = _Outcome()

    def target() -> None:
        # Importing happens here too, so a helper that hangs at import time is bounded by the timeout.
        try:
            fn = _load(module, function, root)
        except BaseException as exc:  # noqa: BLE001 - any import-time failure is the helper's, not ours
            outcome.load_error = exc
            return
        try:
            outcome.value = fn(copy.deepcopy(tick))
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a helper is a failure, not our exit
            outcome.raised = exc

    worker = _WORKER = _WORKER or _Worker()  # a worker is dropped when a call overruns (below)
    if not worker.run(target, timeout):
        # Python cannot kill a thread: the call is abandoned (a daemon thread), not stopped, and the next
        # call gets a fresh worker.
        _WORKER = None
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
        threading.Thread(target=self._serve, name="maestro-handler", daemon=True).start()

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()

    def run(self, job: Callable[[], None], timeout: float) -> bool:
        """Run `job` on the worker; False if it did not finish within `timeout` seconds."""
        done = threading.Event()
        self._jobs.put((job, done))
        return done.wait(timeout)


_WORKER: _Worker | None = None


@dataclass
class _Outcome:
    value: Any = None
    raised: BaseException | None = None
    load_error: BaseException | None = None


def _load(module_name: str, function_name: str, root: Path) -> Callable[[dict[str, Any]], Any]:
    root = _resolved(root)
    module = _imported(module_name, root)
    if module is not None:  # the common case: imported before, from this root, unchanged (one stat)
        return _attribute(module, module_name, function_name)
    with _IMPORT_LOCK:
        _forget_stale(module_name, root)
        entry = str(root)
        sys.path.insert(0, entry)
        writes_bytecode = sys.dont_write_bytecode
        # Keep __pycache__ out of agent roots; it also sidesteps the 1-second pyc staleness window.
        sys.dont_write_bytecode = True
        try:
            importlib.invalidate_caches()
            module = importlib.import_module(module_name)
        finally:
            sys.dont_write_bytecode = writes_bytecode
            try:
                sys.path.remove(entry)
            except ValueError:
                pass
        _remember(module_name, root)
    return _attribute(module, module_name, function_name)


def _attribute(module: Any, module_name: str, function_name: str) -> Callable[[dict[str, Any]], Any]:
    fn: Callable[[dict[str, Any]], Any] | None = getattr(module, function_name, None)
    if fn is None:
        raise LookupError(f"module {module_name!r} has no attribute {function_name!r}")
    if not callable(fn):
        raise TypeError(f"{module_name}.{function_name} is not callable")
    return fn


def _prefixes(module_name: str) -> list[str]:
    parts = module_name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _resolved(root: Path) -> Path:
    return root.resolve()


def _imported(module_name: str, root: Path) -> Any:
    """The module if it is imported and nothing in its package chain is stale for `root`; else None."""
    for name in _prefixes(module_name):
        origin = _ORIGINS.get(name)
        if name not in sys.modules:
            return None
        if origin is not None and (origin[0] != root or _signature(origin[1]) != origin[2]):
            return None
    return sys.modules[module_name]


def _forget_stale(module_name: str, root: Path) -> None:
    """Drop cached agent modules that were edited since import or that belong to another root."""
    stale = False
    for name in _prefixes(module_name):
        origin = _ORIGINS.get(name)
        if origin is not None and name in sys.modules:
            origin_root, source, signature = origin
            stale = stale or origin_root != root or _signature(source) != signature
        if stale:  # once a package is stale, everything below it must be re-imported too
            sys.modules.pop(name, None)
            _ORIGINS.pop(name, None)


def _remember(module_name: str, root: Path) -> None:
    for name in _prefixes(module_name):
        module = sys.modules.get(name)
        source = getattr(module, "__file__", None)
        if not source:
            continue
        path = Path(source).resolve()
        signature = _signature(path)
        if signature is not None and path.is_relative_to(root):
            _ORIGINS[name] = (root, path, signature)


# -- commands -----------------------------------------------------------------


def _run_command(
    argv: tuple[str, ...],
    tick: dict[str, Any],
    *,
    root: Path,
    env: dict[str, str],
    timeout: float,
    kind: Kind,
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
            proc.communicate(payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            proctree.kill_group(proc.pid)
            proc.communicate()
            return HandlerResult(False, _read_tail(out), f"timed out after {timeout:g}s")
        except BaseException:
            proctree.kill_group(proc.pid)
            proc.wait()
            raise
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
