"""`maestro serve` under concurrency: the backlog ceiling is exact over HTTP, and so is an idempotency key."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import pytest

from maestro_py.paths import Folder, Layout
from tests.fakes import names, write_agent
from tests.serve_support import Served


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest):
    layout = write_agent(tmp_path / "agent", prompts={"hello": "hi"})
    s = Served(layout, tmp_path, **getattr(request, "param", {}))
    yield s
    s.stop()


def storm(s: Served, n: int, headers: dict[str, str] | None = None) -> Counter[int]:
    """`n` POSTs released together from `n` threads, each on its own connection; the statuses counted."""
    gate = Barrier(n)

    def one(i: int) -> int:
        gate.wait(timeout=30)
        return s.post("hello", {"payload": {"i": i}} if headers is None else None, headers, timeout=60).status

    with ThreadPoolExecutor(max_workers=n) as pool:
        return Counter(pool.map(one, range(n)))


@pytest.mark.parametrize("served", [{"MAESTRO_MAX_INBOX": 50}], indirect=True)
def test_200_concurrent_posts_at_a_ceiling_of_50_leave_exactly_50_ticks(served: Served) -> None:
    statuses = storm(served, 200)
    assert statuses == Counter({202: 50, 429: 150})
    layout: Layout = served.layout
    assert len(names(layout, Folder.INBOX)) == 50 and names(layout, Folder.TMP) == []


def test_concurrent_replays_of_one_key_make_one_tick(served: Served) -> None:
    statuses = storm(served, 40, {"Idempotency-Key": "storm-1"})
    assert statuses == Counter({202: 1, 200: 39})
    assert len(names(served.layout, Folder.INBOX)) == 1


def test_past_the_connection_limit_healthz_still_answers_the_daemons_health(tmp_path: Path) -> None:
    """1,010 clients that trickle their headers hold every connection: other requests get 503 "overloaded" (the
    server's own state), while /healthz answers what `maestro status` would (here: no daemon, 503 not running)."""
    import resource
    import socket as sockets
    import time

    from maestro_py.serve.server import MAX_CONNECTIONS

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < MAX_CONNECTIONS + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {MAX_CONNECTIONS} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, MAX_CONNECTIONS + 200), hard))
    served = Served(write_agent(tmp_path / "agent", prompts={"hello": "hi"}), tmp_path)  # inherits the limit
    held: list[sockets.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS + 10):
            s = sockets.create_connection(("127.0.0.1", served.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the headers
            held.append(s)
        time.sleep(0.5)
        page = served.request("GET", "/")
        health = served.request("GET", "/healthz")
    finally:
        for s in held:
            s.close()
        served.stop()
    assert page.status == 503 and "overloaded" in page.text
    assert health.status == 503 and health.json()["exit_code"] == 3 and "not running" in health.json()["health"]
