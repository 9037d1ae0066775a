"""The governor store on one machine: an SQLite file every agent root there names (no server).

WAL lets readers run beside the one writer; `BEGIN IMMEDIATE` takes the write lock before a reserve reads
anything, so reserves are serialised across processes by SQLite itself. A writer waits up to
`BUSY_TIMEOUT` for the lock, then the store counts as unavailable for that call (fail closed).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from maestro_py.bus.fsio import private_file
from maestro_py.fleet.store import SqlStore

BUSY_TIMEOUT = 5.0  # seconds a writer waits for another's transaction


class SqliteStore(SqlStore):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{path}"

    _file: tuple[int, int] | None = None  # (device, inode) of the file the open connection uses

    def _connect(self) -> Any:
        if not self.path.parent.is_dir():
            raise sqlite3.OperationalError(f"no folder {self.path.parent}")
        if self._file is not None and not self.path.exists():
            # A store that was in use and is gone: a new empty file would have no limits. Fail closed until it is
            # back (or `maestro governor set` makes one).
            raise sqlite3.OperationalError(f"{self.path} was deleted")
        conn = sqlite3.connect(private_file(self.path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        st = os.stat(self.path)
        self._file = (st.st_dev, st.st_ino)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; a power cut loses the last few
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _same_store(self) -> bool:
        """The file at the store's path is still the one the connection has open (not deleted, not replaced)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._file

    def _begin(self, cur: Any, *, write: bool, serial: bool) -> None:
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error, OSError)
