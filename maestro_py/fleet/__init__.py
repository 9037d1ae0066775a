"""The fleet governor: one budget and one live cap shared by many agent roots (see `store`)."""

from __future__ import annotations

from maestro_py.fleet.model import check_url
from maestro_py.fleet.store import SqlStore


def open_store(url: str) -> SqlStore:
    """The store `url` names (not yet connected: the first call connects, and raises StoreUnavailable)."""
    check_url(url)
    if url.startswith("sqlite:"):
        from maestro_py.fleet.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    from maestro_py.fleet.postgres import PostgresStore

    return PostgresStore(url)
