"""Claim cost at a small vs a large backlog: the ratio should stay near 1 (no per-claim re-list or sort).

    .venv/bin/python bench/claim_cost.py [--small 1000] [--large 100000] [--claims 1000]

The backlog is written directly (no fsync: it is a fixture, not what is measured). What is measured is
one claim as the daemon does it: pick the FIFO head from the index, rename it into claimed/, read and
parse it. Index start-up (one scan that lists the names and reads the oldest batch) is reported separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from maestro_py.bus.store import Bus
from maestro_py.paths import Folder, Layout
from maestro_py.bus.tick import Tick


def build(root: Path, n: int) -> Bus:
    layout = Layout(root)
    layout.ensure()
    bus = Bus(layout, max_inbox=n + 1)
    inbox = layout.folder(Folder.INBOX)
    now = datetime.now(timezone.utc)
    for i in range(n):
        tick = Tick.new(f"c{i % 8}", now=now, source="bench")
        (inbox / tick.filename).write_bytes(tick.to_bytes())
    return bus


def timed_claim(bus: Bus, index) -> float:
    """Seconds for one claim as the daemon makes it: the FIFO head, renamed into claimed/, read, parsed."""
    t = time.perf_counter()
    head = next(index.heads())
    claim = bus.claim(head.name)
    elapsed = time.perf_counter() - t
    assert claim is not None
    return elapsed


def measure(n: int, claims: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        bus = build(Path(tmp), n)
        index = bus.index
        t0 = time.perf_counter()
        index.refresh(force=True)
        scan = time.perf_counter() - t0
        index.promote(bus.clock.now())
        samples = []
        for _ in range(claims):
            samples.append(timed_claim(bus, index))
        return {"backlog": n, "median_us": statistics.median(samples) * 1e6,
                "p99_us": sorted(samples)[int(len(samples) * 0.99) - 1] * 1e6, "scan_s": scan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=1000)
    args = parser.parse_args()
    small = measure(args.small, min(args.claims, args.small))
    large = measure(args.large, min(args.claims, args.large))
    ratio = large["median_us"] / small["median_us"]
    print(json.dumps({"small": small, "large": large, "ratio_median": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()
