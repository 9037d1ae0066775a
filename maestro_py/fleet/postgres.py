"""The governor store across machines: PostgreSQL through psycopg 3.

Reserves are serialised by a row lock (`SELECT … FOR UPDATE` on the one row of `maestro_lock`), taken
before the transaction reads anything; other writes (settle, renew, release) need no lock, as each is one
atomic transaction that only moves an amount from held to charged, and a reserve reads what is charged and
what is held in one statement (READ COMMITTED gives each statement its own snapshot).

No call waits on the server for long, whatever it does: the connect has a timeout; TCP keepalives and
`tcp_user_timeout` cut a peer that stops acknowledging (a dropped link, a dead VM); the server ends a statement, a
lock wait and a transaction left idle (a client frozen while it holds the reserve lock would otherwise stop every
daemon of the fleet); and the client ends any call still waiting after `CALL_DEADLINE` by shutting its socket (a
backend that is stopped, SIGSTOP or a stalled disk, still has its kernel acknowledge every packet, so no TCP
timeout fires). The call then fails, and the caller fails closed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from maestro_py.errors import ConfigError
from maestro_py.fleet.store import SqlStore

CONNECT_TIMEOUT = 3  # seconds
STATEMENT_TIMEOUT_MS = 5000
IDLE_IN_TRANSACTION_MS = 10000  # the server ends a transaction its client left idle this long (and its locks)
SKEW_EVERY = 60.0  # seconds between measures of the server's clock against ours
CALL_DEADLINE = 8.0  # seconds a call may wait on the server before the client cuts its connection
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
             "tcp_user_timeout": 8000}


class PostgresStore(SqlStore):
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            import psycopg
        except ImportError:
            raise ConfigError("MAESTRO_GOVERNOR_URL names PostgreSQL, but psycopg is not installed: "
                              "pip install 'maestro_py[postgres]'") from None
        self._psycopg = psycopg

    def _connect(self) -> Any:
        return self._psycopg.connect(
            self.url, connect_timeout=CONNECT_TIMEOUT, application_name="maestro", **KEEPALIVE,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS} "
                    f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}")

    _offset: tuple[float, float] | None = None  # (the server's clock minus ours, when measured: monotonic)

    def _skew(self, cur: Any) -> float:
        """The server's clock minus this machine's, measured once a minute: leases and charges of every host are
        timed by the server's clock (a host whose clock is 10 min ahead must not expire the others' leases)."""
        mono = time.monotonic()
        if self._offset is None or mono - self._offset[1] > SKEW_EVERY:
            before = self._wall()
            server = float(cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])
            self._offset = (server - (before + self._wall()) / 2, mono)
        return self._offset[0]

    _wall = staticmethod(time.time)  # this machine's clock (a test skews it)

    @contextmanager
    def _deadline(self, conn: Any) -> Iterator[None]:
        """Cut `conn` (shut its socket: the waiting read fails at once) if the call is still running after
        CALL_DEADLINE seconds; the caller then treats the store as unavailable."""
        def cut() -> None:
            try:
                socket.socket(fileno=conn.fileno()).shutdown(socket.SHUT_RDWR)  # the fd stays psycopg's
            except OSError:
                pass
        timer = threading.Timer(CALL_DEADLINE, cut)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _init_first(self, cur: Any) -> None:
        # Many daemons starting at once would race CREATE TABLE IF NOT EXISTS (a known PostgreSQL race on
        # the catalog): one at a time.
        cur.execute("SELECT pg_advisory_xact_lock(7361)")

    def _init_extra(self, cur: Any) -> None:
        cur.execute("CREATE TABLE IF NOT EXISTS maestro_lock (id INTEGER PRIMARY KEY)")
        cur.execute("INSERT INTO maestro_lock (id) VALUES (1) ON CONFLICT (id) DO NOTHING")

    def _begin(self, cur: Any, *, write: bool, serial: bool) -> None:
        # psycopg opens the transaction with the first statement; the lock row makes it the only reserve.
        if serial:
            cur.execute("SELECT id FROM maestro_lock WHERE id = 1 FOR UPDATE")

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._psycopg.Error, OSError)
