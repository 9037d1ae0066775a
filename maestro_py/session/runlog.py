"""A sub-session's log files: opened append-only (0600) at spawn, redacted and read back after exit."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from maestro_py.errors import SpawnError
from maestro_py.redact import Redactor
from maestro_py.session.command import SpawnSpec

TAIL_BYTES = 4096  # how much of a failed run's output its event and history entry carry
_LOG_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_APPEND


def settle(path: Path, offset: int, redactors: Sequence[Redactor]) -> bytes:
    """Redact `path` in place if it holds a secret; return the (redacted) bytes this run wrote after `offset`."""
    try:
        data = path.read_bytes()
    except OSError:
        return b""
    clean = redact_bytes(data, redactors)
    if clean != data:
        try:
            _replace(path, clean)
        except OSError:
            pass
    # Bytes before the spawn-time size belong to earlier runs appended to the same log.
    return redact_bytes(data[offset:], redactors)


def redact_bytes(data: bytes, redactors: Sequence[Redactor]) -> bytes:
    """`data` with every redactor's secrets masked."""
    for redactor in redactors:
        data = redactor.bytes(data)
    return data


def redact_text(text: str, redactors: Sequence[Redactor]) -> str:
    """`text` with every redactor's secrets masked."""
    for redactor in redactors:
        text = redactor.text(text)
    return text


def log_paths(spec: SpawnSpec) -> list[Path]:
    """The run's log files (one when stdout and stderr share it)."""
    return [spec.stdout_log] if spec.stderr_log == spec.stdout_log else [spec.stdout_log, spec.stderr_log]


def open_logs(spec: SpawnSpec) -> tuple[int, int, dict[Path, int]]:
    """Open both logs append-only, mode 0600; also return each one's size now (where this run starts)."""
    fds: list[int] = []
    offsets: dict[Path, int] = {}
    try:
        for path in log_paths(spec):
            fd = os.open(path, _LOG_FLAGS, 0o600)
            fds.append(fd)
            # The mode argument only applies on creation; an older, wider file must not leak secrets.
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                pass
            offsets[path] = os.fstat(fd).st_size
    except OSError as exc:
        close_fds(*fds)
        raise SpawnError(f"cannot open sub-session log {exc.filename}: {exc.strerror}") from exc
    return fds[0], fds[-1], offsets


def prompt_file(data: bytes) -> BinaryIO:
    """An unlinked temp file holding the prompt, positioned at its start."""
    # A file, not a pipe: no writer thread, no 128 KiB argv limit, and the CLI sees EOF at once
    # instead of waiting 3 s on an open empty pipe.
    try:
        prompt = tempfile.TemporaryFile()
        try:
            prompt.write(data)
            prompt.flush()
            prompt.seek(0)
        except BaseException:
            prompt.close()
            raise
    except OSError as exc:
        raise SpawnError(f"cannot stage the prompt in a temp file: {exc.strerror or exc}") from exc
    return prompt


def close_fds(*fds: int) -> None:
    """Close each descriptor once, ignoring errors."""
    for fd in set(fds):
        try:
            os.close(fd)
        except OSError:
            pass


def exec_reason(spec: SpawnSpec, exc: OSError) -> str:
    """One line saying why the CLI could not be started."""
    program = spec.argv[0]
    if exc.errno == errno.E2BIG:
        size = sum(len(a.encode()) + 1 for a in spec.argv)
        return f"cannot start {program}: argument list too long ({size} bytes); pass the prompt on stdin"
    if exc.errno == errno.ENOENT and exc.filename is not None and str(exc.filename) == str(spec.cwd):
        return f"cannot start {program}: working directory {spec.cwd} does not exist"
    if exc.errno == errno.ENOENT:
        return f"cannot start {program}: no such file (is the claude CLI installed and on PATH?)"
    if exc.errno == errno.EACCES:
        return f"cannot start {program}: permission denied (not executable?)"
    return f"cannot start {program}: {exc.strerror or exc}"


def _replace(path: Path, data: bytes) -> None:
    """Rewrite `path` atomically (tmp file + rename), mode 0600, so a crash never leaves half a log."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.redact")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def delete_if_empty(path: Path) -> None:
    """A run that wrote nothing leaves no log file."""
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass

