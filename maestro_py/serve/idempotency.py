"""Idempotency keys: a trigger repeated with the same key within 24 h gets the first tick's id, and writes nothing.

The keys live in `state/serve-keys.sqlite3` (the standard library's SQLite, WAL, synchronous=FULL), so they
survive a restart of the server and are shared by servers on the same root. `claim()` holds SQLite's write
lock (BEGIN IMMEDIATE) from the look-up through the enqueue to the insert, so two racing requests with one
key make one tick. Rows older than 24 h are pruned on every insert, and at most MAX_KEYS are kept (the
oldest go first), so the file stays bounded whatever clients send.

A key is remembered with a fingerprint of its request (cadence and raw body): the same key with another
request is a client bug, answered 422 rather than silently mapped to the first request's tick. Across a
crash of the server between its enqueue and the commit, a key may be forgotten (at-least-once, as a tick is).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maestro_py.bus.fsio import private_file
from maestro_py.errors import ConfigError
from maestro_py.serve.http import HttpError

TTL_SECONDS = 24 * 3600
MAX_KEYS = 100_000
MAX_KEY_LENGTH = 200
BUSY_TIMEOUT_MS = 2_000  # a keyed request waits at most this for another writer (then 503, Retry-After)
RETRY_AFTER_BUSY = 5
CAP_EVERY = 1000  # inserts between checks of MAX_KEYS (the check walks the index): at most MAX_KEYS + this kept
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, cadence TEXT NOT NULL, tick_id TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_created ON keys (created);
"""


@dataclass(frozen=True)
class Remembered:
    """The tick a key was first used for."""

    tick_id: str
    cadence: str
    created: float


def check_key(key: str) -> str:
    """A usable key: 1-200 visible ASCII characters (else 400)."""
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        raise HttpError(400, f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} visible ASCII characters")
    return key


def fingerprint(cadence: str, body: bytes) -> str:
    """What identifies a request for its key: its cadence and body (`canonical` for a JSON envelope)."""
    return hashlib.sha256(cadence.encode() + b"\0" + body).hexdigest()


def canonical(doc: Any) -> bytes:
    """A JSON document as one form whatever its spacing and key order: the same envelope sent again with other
    whitespace is the same request, not another one under the same key (422)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class KeyStore:
    """The keys of one agent root (thread-safe: one connection, used under a lock)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._inserts = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(private_file(path)), isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a key answered is a key kept
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:  # corrupt, not a database, locked past the timeout: one line at start
            raise ConfigError(f"{path}: the idempotency keys cannot be used ({exc}); move the file aside (keys "
                              "only live 24 h) and start again") from None

    @contextmanager
    def claim(self, key: str, fp: str) -> Iterator[tuple[Remembered | None, Callable[[str, str], None]]]:
        """Under the write lock: (the tick the key already names, or None; a `remember(tick_id, cadence)` to
        call once the tick is enqueued). 422 if the key was used for another request. An exception inside the
        block rolls back: nothing is remembered for a request that wrote nothing."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # another writer holds it past the busy timeout: bounded
                raise HttpError(503, f"the idempotency keys are busy ({exc}); retry shortly",
                                {"Retry-After": str(RETRY_AFTER_BUSY)}) from None
            try:
                now = self._clock()
                row = self._db.execute("SELECT fingerprint, tick_id, cadence, created FROM keys WHERE key = ? "
                                       "AND created >= ?", (key, now - TTL_SECONDS)).fetchone()
                if row is not None and row[0] != fp:
                    raise HttpError(422, "this Idempotency-Key was already used for a different request")
                found = Remembered(row[1], row[2], row[3]) if row is not None else None

                def remember(tick_id: str, cadence: str) -> None:
                    self._db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?, ?)",
                                     (key, fp, cadence, tick_id, now))
                    self._prune(now)

                yield found, remember
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _prune(self, now: float) -> None:
        self._db.execute("DELETE FROM keys WHERE created < ?", (now - TTL_SECONDS,))
        self._inserts += 1
        if self._inserts % CAP_EVERY == 0:
            self._db.execute("DELETE FROM keys WHERE key IN (SELECT key FROM keys ORDER BY created DESC "
                             "LIMIT -1 OFFSET ?)", (MAX_KEYS,))

    def count(self) -> int:
        """How many keys are kept."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM keys").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
