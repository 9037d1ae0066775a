"""Single owner per agent root: an flock that dies with its process (no stale lock after kill -9)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import psutil

from maestro_py.errors import AlreadyRunning
from maestro_py.state import holder  # how everyone else reads who holds it


class DaemonLock:
    """Held for the daemon's lifetime; the file names the holder's pid for the refusal message."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self._fd: int | None = None

    def acquire(self, *, settle: float = 2.0) -> None:
        """Take the lock or raise AlreadyRunning naming the live owner's pid.

        Two transient refusals are waited out for up to `settle` seconds: no pid written yet (the owner won
        a simultaneous start and writes its pid just after its flock), and a holder that is already dead
        (a daemon killed while starting a sub-session: the child shares the flock until its exec).
        """
        deadline = time.monotonic() + settle
        while True:
            try:
                self._try_acquire()
                return
            except AlreadyRunning as exc:
                if (exc.pid is not None and _alive(exc.pid)) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def _try_acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(holder(self.path), str(self.root)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DaemonLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
