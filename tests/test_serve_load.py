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
