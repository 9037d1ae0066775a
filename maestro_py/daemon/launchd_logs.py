"""Rotation of the files launchd writes a job's stdout and stderr to (`<root>/logs/launchd-*.log`).

launchd never rotates them, and macOS's own rotator (newsyslog) needs a root-owned snippet in /etc/newsyslog.d.
Retention does it instead, unattended and without root: a file past `MAX_BYTES` is copied to `<name>.1` (replacing
the previous copy, so at most twice the cap stays on disk) and then truncated in place. It cannot be renamed away:
the daemon and `maestro serve` keep writing to the descriptor launchd opened for them, with `O_APPEND`, so after the
truncation their next line lands at the start of the emptied file, not after a hole. Lines written between the
copy's last read and the truncation (microseconds) are lost; the copy is made durable before anything is cut.
"""

from __future__ import annotations

import os
from pathlib import Path

from maestro_py.bus.fsio import fsync_dir, unlink_missing_ok

MAX_BYTES = 10 * 1024 * 1024
PATTERN = "launchd-*.log"
CHUNK = 1024 * 1024


def oversized(logs_dir: Path, max_bytes: int | None = None) -> list[tuple[Path, int]]:
    """(path, size) of every launchd log past the cap (regular files only: a link is never followed)."""
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    found = []
    for path in sorted(logs_dir.glob(PATTERN)):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        if st.st_size > max_bytes:
            found.append((path, st.st_size))
    return found


def rotate(path: Path) -> int:
    """Copy `path` to `path.1` (atomically, durably), then truncate it; returns the lines moved."""
    archive = path.with_name(path.name + ".1")
    tmp = path.with_name(f".{path.name}.1.tmp")
    lines = 0
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(fd, CHUNK):  # to the end as it is now, and what arrives while copying
                os.write(out, chunk)
                lines += chunk.count(b"\n")
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, archive)
        fsync_dir(path.parent)
        while chunk := os.read(fd, CHUNK):  # written while the copy was made durable
            with open(archive, "ab") as late:
                late.write(chunk)
            lines += chunk.count(b"\n")
        os.ftruncate(fd, 0)
    except BaseException:
        unlink_missing_ok(tmp)
        raise
    finally:
        os.close(fd)
    return lines


def count_lines(path: Path) -> int:
    """The lines a rotation would move (`maestro prune --dry-run`)."""
    lines = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            lines += chunk.count(b"\n")
    return lines
