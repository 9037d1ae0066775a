"""The cost ledger: one JSON line per sub-session, the source of truth for spend."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from maestro_py.bus.fsio import append_whole
from maestro_py.redact import Redactor

BLOCK = 64 * 1024  # how much of the file `newest_first` reads at a time, from its end


class Ledger:
    """Append-only `state/cost-ledger.jsonl`; unmeasured figures are null, never 0."""

    def __init__(self, path: Path, redactor: Redactor | None = None) -> None:
        self.path = path
        self.redactor = redactor or Redactor()
        # Called with each row, secrets masked, once it is durable (the metrics' spend by cadence and model);
        # a listener that raises is ignored.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def append(self, row: dict[str, Any]) -> None:
        """Write one row durably under the ledger's flock (retention rewrites the file under the same lock)."""
        masked = self.redactor.data(row)
        line = (json.dumps(masked, ensure_ascii=False, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # Retention may have replaced the file while we waited: write to the one the path names now.
                st = os.fstat(fd)
                if st.st_ino == os.stat(self.path).st_ino:
                    append_whole(fd, line, st.st_size)  # the whole line, or none of it
                    break
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        for listener in self.listeners:
            try:
                listener(masked)
            except Exception:  # noqa: BLE001 - a listener must not stop a settle
                pass

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every parsable row, oldest first (a torn last line from a crash is skipped)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(row, dict):
                        yield row
        except FileNotFoundError:
            return

    def newest_first(self, needle: bytes | None = None) -> Iterator[dict[str, Any]]:
        """Every parsable row, newest first, read from the end of the file a block at a time: the last rows of a
        large ledger cost what they weigh, not what the file does. `needle`: only lines containing these bytes are
        parsed (a cheap filter that must never leave out a row the caller wants: a cadence's quoted name, say)."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            pos = fh.seek(0, os.SEEK_END)
            head = b""  # the start of a line whose beginning is in the block before
            while pos > 0:
                size = min(BLOCK, pos)
                pos -= size
                fh.seek(pos)
                lines = (fh.read(size) + head).split(b"\n")
                head = lines[0]
                for line in reversed(lines[1:]):
                    row = _parse(line, needle)
                    if row is not None:
                        yield row
            row = _parse(head, needle)
            if row is not None:
                yield row


def _parse(line: bytes, needle: bytes | None) -> dict[str, Any] | None:
    """One line as a row; None for an empty, unwanted, torn or unparsable one."""
    if not line or (needle is not None and needle not in line):
        return None
    try:
        row = json.loads(line)
    except ValueError:  # a torn line (UnicodeDecodeError is a ValueError too)
        return None
    return row if isinstance(row, dict) else None
