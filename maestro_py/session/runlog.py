"""A sub-session's log files: opened append-only (0600) at spawn, capped while it runs, redacted after exit
(streamed: never read whole), and read back from their ends."""

from __future__ import annotations

import errno
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from maestro_py.bus.fsio import scan_dir
from maestro_py.bus.tick import Tick
from maestro_py.clock import parse_iso
from maestro_py.errors import ClaudeUnavailable, SpawnError
from maestro_py.paths import Layout
from maestro_py.redact import Redactor
from maestro_py.session.command import SpawnSpec
from maestro_py.session.metering import RESULT_WINDOW

TAIL_BYTES = 4096  # how much of a failed run's output its event and history entry carry
MIB = 1 << 20
CHUNK = MIB  # logs are read, redacted and copied this much at a time, never whole
# Longer than any credential: a secret crossing a cut lies within this many bytes of it.
SECRET_SPAN = 64 << 10
_CUT_TRIES = 4  # cuts tried per chunk before the output waits for more (a secret at each one)
CHECK_INTERVAL = 0.1  # how often the watcher compares the logs with their cap (a stat each)
_NOT_IN_TOKENS = re.compile(rb"[^A-Za-z0-9_\-.~+/=]")  # keys and tokens are made of the other bytes
_LOG_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_APPEND


class StreamRedactor:
    """Masks secrets in output fed in chunks as `redact_bytes` masks it whole: a secret split between two
    chunks is still masked. Holds a chunk and a few SECRET_SPANs at most."""

    def __init__(self, redactors: Sequence[Redactor], span: int = SECRET_SPAN) -> None:
        self._redactors = redactors
        self._span = span
        self._carry = b""
        self.changed = False  # some secret was masked

    def feed(self, chunk: bytes) -> bytes:
        """The redacted output up to a cut no secret crosses; the rest waits for the next chunk."""
        buf = self._carry + chunk
        cut = self._cut(buf)
        self._carry = buf[cut:]
        return self._clean(buf[:cut])

    def close(self) -> bytes:
        """The rest of the output, redacted."""
        rest, self._carry = self._carry, b""
        return self._clean(rest)

    def _cut(self, buf: bytes) -> int:
        """Where to split `buf` (at least a span before its end, where more output may complete a secret): a
        point where masking each side alone gives what masking both together does; 0 to wait for more."""
        span = self._span
        for k in range(1, _CUT_TRIES + 1):
            cut = len(buf) - k * span
            if cut <= 0:
                return 0
            if self._clean_split(buf[max(0, cut - span):cut], buf[cut:cut + span]):
                return cut
        # Secrets (or one key-shaped token) at every try: hostile output. Memory stays bounded all the same.
        return 0 if len(buf) < 2 * CHUNK else len(buf) - span

    def _clean_split(self, left: bytes, right: bytes) -> bool:
        """True if no secret crosses from `left` into `right` (each masked alone = both masked together)."""
        whole = redact_bytes(left + right, self._redactors)
        return redact_bytes(left, self._redactors) + redact_bytes(right, self._redactors) == whole

    def _clean(self, data: bytes) -> bytes:
        clean = redact_bytes(data, self._redactors)
        self.changed = self.changed or clean != data
        return clean


def settle(path: Path, offset: int, redactors: Sequence[Redactor], cap: int | None = None,
           ended: bool = False) -> None:
    """Redact `path` in place and cut what this run wrote after `offset` to `cap` bytes, in bounded memory.

    A cut keeps the start and the end (where the CLI prints its result) with a mark where output was dropped;
    `ended` (the run was ended for its output) adds a last line saying so.
    """
    try:
        size = path.stat().st_size
        if cap is not None and size - offset > cap:
            pieces = _capped(path, offset, size, cap, ended)
        elif _holds_secret(path, redactors):
            pieces = [(0, size)]
        else:
            return
        _rewrite(path, pieces, redactors)
    except OSError:
        pass  # unreadable or unwritable: the file stays as the child left it, and its bytes are redacted on read


def over_cap(spec: SpawnSpec, offsets: dict[Path, int]) -> bool:
    """True once one of the run's logs has grown past its cap since the spawn."""
    if spec.log_max_bytes is None:
        return False
    for path in log_paths(spec):
        try:
            if os.stat(path).st_size - offsets.get(path, 0) > spec.log_max_bytes:
                return True
        except OSError:
            pass
    return False


def settle_run(spec: SpawnSpec, offsets: dict[Path, int], redactors: Sequence[Redactor],
               ended: bool) -> tuple[bytes, str]:
    """Settle the run's logs; return the end of its stdout (where the result is) and its tail for events."""
    for path in log_paths(spec):
        settle(path, offsets.get(path, 0), redactors, spec.log_max_bytes, ended)
    # Read back only the ends; redacted again in case a rewrite failed.
    stdout = redact_bytes(read_end(spec.stdout_log, offsets.get(spec.stdout_log, 0), RESULT_WINDOW), redactors)
    stderr = stdout if spec.stderr_log == spec.stdout_log else \
        redact_bytes(read_end(spec.stderr_log, offsets.get(spec.stderr_log, 0), TAIL_BYTES), redactors)
    for path in log_paths(spec):
        delete_if_empty(path)
    tail_source = stderr if stderr.strip() else stdout
    return stdout, redact_text(tail_source[-TAIL_BYTES:].decode("utf-8", errors="replace"), redactors)


def read_end(path: Path, offset: int, size: int) -> bytes:
    """The last `size` bytes of `path` after `offset` (b"" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(offset, os.fstat(f.fileno()).st_size - size))
            return f.read(size)
    except OSError:
        return b""


def cap_mib(cap: int) -> str:
    """A cap in bytes as the MiB figure an operator set."""
    return f"{cap / MIB:g}"


def redact_bytes(data: bytes, redactors: Sequence[Redactor]) -> bytes:
    """`data` with every redactor's secrets masked (whole: see StreamRedactor for a file)."""
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


def exec_error(spec: SpawnSpec, exc: OSError) -> SpawnError:
    """The error for a failed exec: `ClaudeUnavailable` when the program itself cannot run (missing, not
    executable, not a program), a plain SpawnError for anything else (a missing working directory, say)."""
    reason = exec_reason(spec, exc)
    on_cwd = exc.filename is not None and str(exc.filename) == str(spec.cwd)
    if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR) and not on_cwd:
        return ClaudeUnavailable(reason, spec.argv[0])
    return SpawnError(reason)


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
    if exc.errno == errno.ENOEXEC:
        return (f"cannot start {program}: exec format error (built for another machine, or a script "
                "without a #! line)")
    return f"cannot start {program}: {exc.strerror or exc}"


Piece = tuple[int, int] | bytes  # a byte range of the old file to copy redacted, or a line to write


def _capped(path: Path, offset: int, size: int, cap: int, ended: bool) -> list[Piece]:
    """The pieces of a log cut to `cap`: earlier runs' part, this run's head and last bytes, the marks."""
    keep = min(RESULT_WINDOW, cap // 2)
    head_end, tail_start = offset + cap - keep, size - keep
    with open(path, "rb") as f:
        f.seek(max(offset, head_end - SECRET_SPAN))
        before = f.read(head_end - f.tell())
        head_end -= _boundary(before[::-1])
        f.seek(tail_start)
        tail_start += _boundary(f.read(SECRET_SPAN))
    dropped = tail_start - head_end
    pieces: list[Piece] = [(0, head_end),
                           f"\n[maestro: {dropped:,} bytes of output dropped here (over the {cap_mib(cap)} MiB cap)]\n"
                           .encode(), (tail_start, size)]
    if ended:
        pieces.append(f"\n[maestro: output truncated at {cap_mib(cap)} MiB; run ended]\n".encode())
    return pieces


def _boundary(data: bytes) -> int:
    """How far into `data` to cut: just past its first line end, else past its first byte no credential holds
    (no JSON line, and no secret, is then cut in two); 0 if it has neither."""
    found = data.find(b"\n")
    if found < 0:
        match = _NOT_IN_TOKENS.search(data)
        found = match.start() if match else -1
    return found + 1


def _holds_secret(path: Path, redactors: Sequence[Redactor]) -> bool:
    """True if redacting `path` would change it (read a chunk at a time, stopping at the first secret)."""
    stream = StreamRedactor(redactors)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            stream.feed(chunk)
            if stream.changed:
                return True
    stream.close()
    return stream.changed


def _rewrite(path: Path, pieces: list[Piece], redactors: Sequence[Redactor]) -> None:
    """Replace `path` atomically (tmp file + rename, mode 0600) by its pieces, each range redacted as a stream,
    so a crash never leaves half a log."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.redact")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        last = b"\n"
        with open(path, "rb") as src:
            for piece in pieces:
                if isinstance(piece, bytes):
                    # A mark starts on a line of its own, without a blank line before it.
                    last = _write(fd, piece[1:] if last == b"\n" and piece.startswith(b"\n") else piece, last)
                    continue
                start, stop = piece
                src.seek(start)
                stream = StreamRedactor(redactors)
                while start < stop and (chunk := src.read(min(CHUNK, stop - start))):
                    start += len(chunk)
                    last = _write(fd, stream.feed(chunk), last)
                last = _write(fd, stream.close(), last)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def _write(fd: int, data: bytes, last: bytes) -> bytes:
    """Write all of `data`; return the last byte written so far."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return data[-1:] or last


def delete_if_empty(path: Path) -> None:
    """A run that wrote nothing leaves no log file."""
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def run_logs(layout: Layout, tick: Tick, attempt: int | None = None) -> list[Path]:
    """The per-run log files of `tick` (of one `attempt`, if given), oldest first, as `command.log_stamp` names
    them: `<date>-<cadence>-HHMMSS-a<attempt>-<last 6 of the id>.{stdout,stderr}.log`."""
    tries = str(attempt) if attempt is not None else r"\d+"
    named = re.compile(rf"\d{{4}}-\d\d-\d\d-{re.escape(tick.cadence)}-\d{{6}}-a{tries}-{re.escape(tick.id[-6:])}"
                       rf"\.std(?:out|err)\.log\Z")
    found = [Path(e.path) for e in scan_dir(layout.subsessions_dir) if named.match(e.name)]
    enqueued = parse_iso(tick.enqueued_at).astimezone().strftime("%Y-%m-%d")
    # The six characters can repeat across ticks of one cadence: keep those not older than the tick itself.
    return sorted((p for p in found if p.name[:10] >= enqueued), key=lambda p: (p.name[:10], p.name))
