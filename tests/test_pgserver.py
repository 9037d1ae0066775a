"""The test PostgreSQL server itself (tests/pgserver.py): a fresh database per test, and a restart that
really takes the server down and brings it back on the same port with the same data."""

from __future__ import annotations

import time

import pytest

psycopg = pytest.importorskip("psycopg")


def test_a_fresh_database_takes_a_table_and_a_row(pg_url: str) -> None:
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t VALUES (1, 'one')")
        assert conn.execute("SELECT id, name FROM t").fetchall() == [(1, "one")]


def test_the_server_url_names_a_database_that_exists(pg_server) -> None:
    with psycopg.connect(pg_server.url, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("maestro",)


def test_a_restart_keeps_port_and_data_and_refuses_while_down(pg_server, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    port = pg_server.port

    pg_server.stop()
    try:
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_url, connect_timeout=2)
        assert time.monotonic() - began < 5  # refused at once, not a hang
    finally:
        pg_server.start()

    pg_server.restart()  # the whole round trip in one call, too
    assert pg_server.port == port
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
