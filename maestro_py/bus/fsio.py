"""Durable file primitives: write under tmp, fsync, publish by rename or link, fsync the directory."""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What a full or broken disk raises: the daemon pauses and requeues rather than blaming the tick.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
LOW_SPACE_BYTES = 1 << 20


def disk_trouble(path: Path) -> str | None:
    """Why files under `path` cannot be written now (read-only, out of space or inodes), or None."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return f"cannot check the disk: {exc.strerror}"
    if st.f_flag & os.ST_RDONLY:
        return "its filesystem is read-only"
    if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES:
        return "its disk is full"
    if st.f_files and st.f_favail == 0:
        return "its disk has no free inodes"
    return None


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), looked up on the first group commit (ctypes is not loaded by a bus that never makes one,
    such as `maestro enqueue`'s); None where there is none."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the symbols already loaded: libc on Linux
        return libc.syncfs
    except (OSError, AttributeError):  # not Linux (or no glibc): the per-file fallback is used
        return None


def sync_files(files: Iterable[Path], folders: Iterable[Path]) -> None:
    """Make `files` (written without fsync) and the renames into `folders` durable, all at once.

    On Linux this is one syncfs(2) of the filesystem holding them: a single journal commit and cache
    flush for a whole batch, where one fsync per file would pay one each (group commit). Elsewhere it
    fsyncs each file, then each folder.
    """
    files, folders = list(files), list(folders)
    if not files and not folders:
        return
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(folders[0] if folders else files[0], os.O_RDONLY | os.O_CLOEXEC)
        try:
            if syncfs(fd) != 0:
                import ctypes

                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
        finally:
            os.close(fd)
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in folders:
        fsync_dir(folder)


def write_tmp(tmp_dir: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> Path:
    """Write `data` to a fresh, uniquely named file under `tmp_dir` (and fsync it, if `durable`)."""
    path = tmp_dir / f"{uuid.uuid4().hex}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    return path


def append_line(path: Path, line: bytes, size: int, *, cut: bool = False, durable: bool = True) -> bool:
    """Append `line` to the file at `path`, which holds `size` good bytes (`cut`: and after them the torn bytes
    of an earlier append, cut off first), with one O_APPEND write, fdatasynced if `durable`. False if the file
    cannot be opened for writing (its mode, say): the caller rewrites it instead. A failed write is undone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:
        return False
    try:
        if cut:
            os.ftruncate(fd, size)
        append_whole(fd, line, size, sync=os.fdatasync if durable else None)
    finally:
        os.close(fd)
    return True


def append_whole(fd: int, data: bytes, size: int, *, sync: Callable[[int], None] | None = os.fsync) -> None:
    """Write all of `data` at the end of the O_APPEND file `fd`, which holds `size` bytes, then `sync` it; on any
    failure cut the file back to `size` and raise. A disk that fills mid-line returns a short write first and
    ENOSPC only on the next one: without the cut, the next append would continue a torn line."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync is not None:
            sync(fd)
    except BaseException:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise


def truncate_quietly(path: Path, size: int) -> None:
    """Cut the file at `path` back to `size` bytes, if it can be (best effort: undoing an append)."""
    try:
        os.truncate(path, size)
    except OSError:
        pass


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, tmp_dir: Path | None = None,
                 durable: bool = True) -> None:
    """Replace `path` with `data` atomically (readers see old or new, never half), and durably unless
    `durable=False` (for files rewritten every second, such as the status file, where losing the
    latest version to a power cut costs nothing)."""
    tmp = write_tmp(tmp_dir or path.parent, data, mode=mode, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, tmp_dir: Path | None = None, durable: bool = True) -> None:
    """`atomic_write` of a JSON document (trailing newline)."""
    atomic_write(path, dump_json(obj), tmp_dir=tmp_dir, durable=durable)


def dump_json(obj: Any) -> bytes:
    """The project's JSON file encoding."""
    return (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def unlink_missing_ok(path: Path) -> None:
    """Remove `path`; a file that is already gone is fine (other errors are raised)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def scan_dir(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of `folder` (none if it does not exist)."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is edited or replaced (inode, size, mtime), or None if it is not there: a cheap
    "has it changed" for files re-read on change (`cadences.toml`, `.env`)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def private_file(path: Path) -> Path:
    """`path` created 0600 if missing, before a library opens it (SQLite gives its -wal and -shm files the
    database file's mode, so they are private too); an existing file is left as it is."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
    return path


@contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600 if missing) for the block; it dies with the process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
