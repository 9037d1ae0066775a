"""The governor store across machines: PostgreSQL through psycopg 3.

Reserves are serialised by a row lock (`SELECT … FOR UPDATE` on the one row of `maestro_lock`), taken
before the transaction reads anything; other writes (settle, renew, release) need no lock, as each is one
atomic transaction that only moves an amount from held to charged, and a reserve reads what is charged and
what is held in one statement (READ COMMITTED gives each statement its own snapshot). Every connection has short connect,
statement and lock timeouts, so an unreachable or wedged server makes the call fail (fail closed) instead
of blocking the daemon's loop.
"""

from __future__ import annotations

from typing import Any

from maestro_py.errors import ConfigError
from maestro_py.fleet.store import SqlStore

CONNECT_TIMEOUT = 3  # seconds
STATEMENT_TIMEOUT_MS = 5000


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
            self.url, connect_timeout=CONNECT_TIMEOUT, application_name="maestro",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS}")

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
