"""The fleet governor under contention: many processes reserving and settling against one store.

    .venv/bin/python bench/governor_contention.py [--workers 50] [--ops 40] [--backend sqlite|postgres|both]

Each of `--workers` processes (spawn) opens its own store connection, waits at a barrier, then runs `--ops`
cycles: one `reserve` of RESERVATION tokens and, if admitted, one `settle` charging exactly that amount.
The fleet daily token limit is 60 % of workers × ops × RESERVATION, so exactly limit // RESERVATION
reserves can ever be admitted and the rest are refused. Per cycle it times (time.perf_counter) reserve
alone and reserve+settle. Backends: SQLite in a temp folder, and PostgreSQL from tests/pgserver.py (a
throwaway local cluster, fsync off). OVERSHOOT = charged tokens − limit must be ≤ 0, and admitted must equal
limit // RESERVATION (no under-use); the script prints a markdown table and exits 1 if either fails.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from maestro_py.fleet import open_store  # noqa: E402
from maestro_py.fleet.model import Lease, StoreUnavailable  # noqa: E402

RESERVATION = 1000  # tokens per reserve (and per settle)
SHARE = 0.6         # the limit covers this share of all attempts
SETTLE_TRIES = 5    # a settle is idempotent: retried, as the daemon's outbox would


def now() -> datetime:
    return datetime.now(timezone.utc)


def worker(n: int, url: str, ops: int, barrier, out) -> None:
    """`ops` reserve(+settle) cycles against `url`; puts one result dict on `out`."""
    res: dict = {"worker": n, "cycle": [], "admitted_cycle": [], "reserve": [], "admitted": 0, "refused": 0,
                 "errors": 0, "error": None}
    try:
        store = open_store(url)
        store.ping()  # connect (and see the schema) before the clock starts
        host, pid = socket.gethostname(), os.getpid()
        barrier.wait(timeout=300)
        res["start"] = time.monotonic()
        for i in range(ops):
            run_id = f"w{n}-{i}"
            lease = Lease(run_id, f"agent{n}", "bench", host, pid, run_id, RESERVATION, 0.0)
            t0 = time.perf_counter()
            try:
                adm = store.reserve(lease, now(), lease_seconds=60, max_live=None)
            except StoreUnavailable:
                res["errors"] += 1
                continue
            t1 = time.perf_counter()
            if adm.admitted:
                for attempt in range(SETTLE_TRIES):
                    try:
                        store.settle(run_id, tokens=RESERVATION, usd=0.0, measured=True, now=now())
                        break
                    except StoreUnavailable:
                        res["errors"] += 1
                res["admitted"] += 1
            else:
                res["refused"] += 1
            t2 = time.perf_counter()
            res["reserve"].append(t1 - t0)
            res["cycle"].append(t2 - t0)
            if adm.admitted:
                res["admitted_cycle"].append(t2 - t0)
        res["end"] = time.monotonic()
        store.close()
    except BaseException as exc:  # report, never hang the parent
        res["error"] = f"{type(exc).__name__}: {exc}"
    out.put(res)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile, in ms."""
    if not values:
        return float("nan")
    s = sorted(values)
    return 1000 * s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def run(backend: str, url: str, workers: int, ops: int) -> dict:
    limit = int(SHARE * workers * ops * RESERVATION)
    store = open_store(url)
    store.set_limit("fleet", "daily", tokens=limit)
    store.close()
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(n, url, ops, barrier, out)) for n in range(workers)]
    for p in procs:
        p.start()
    results = []
    for _ in procs:
        try:
            results.append(out.get(timeout=900))
        except queue.Empty:
            break
    for p in procs:
        p.join(timeout=30)
    failed = [r["error"] for r in results if r["error"]] + ["a worker gave no result"] * (workers - len(results))
    if failed:
        raise SystemExit(f"{backend}: {len(failed)} worker(s) failed, e.g. {failed[0]}")
    store = open_store(url)
    charged = sum(c["tokens"] for c in store.charges())
    live = len(store.live(now()))
    store.close()
    join = lambda key: [x for r in results for x in r[key]]  # noqa: E731
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cycles = len(join("cycle"))
    return {
        "backend": backend, "cycles": cycles, "admitted": sum(r["admitted"] for r in results),
        "refused": sum(r["refused"] for r in results), "errors": sum(r["errors"] for r in results),
        "wall": wall, "rate": cycles / wall, "limit": limit, "charged": charged, "live": live,
        "cycle": join("cycle"), "admitted_cycle": join("admitted_cycle"), "reserve": join("reserve"),
    }


def sqlite_run(workers: int, ops: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="gov-bench-") as tmp:
        return run("SQLite (WAL, one file)", f"sqlite:///{tmp}/governor.db", workers, ops)


def postgres_run(workers: int, ops: int) -> dict:
    from tests.pgserver import PgServer, pg_available

    why = pg_available()
    if why:
        raise SystemExit(f"postgres: {why}")
    server = PgServer()
    try:
        server.start()
        return run("PostgreSQL (local, fsync off)", server.create_database("bench"), workers, ops)
    finally:
        server.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=50)
    ap.add_argument("--ops", type=int, default=40, help="cycles per worker")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = ap.parse_args()
    rows = []
    if args.backend in ("sqlite", "both"):
        rows.append(sqlite_run(args.workers, args.ops))
    if args.backend in ("postgres", "both"):
        rows.append(postgres_run(args.workers, args.ops))
    print(f"{args.workers} processes × {args.ops} cycles, {RESERVATION} tokens reserved and charged per admitted "
          f"cycle, fleet daily limit {SHARE:.0%} of all attempts; latencies in ms\n")
    print("| Backend | cycles | admitted | refused | errors | wall | cycles/s | reserve+settle p50 | p99 "
          "| admitted cycles p50 | p99 | reserve alone p50 | p99 | limit (tokens) | charged | OVERSHOOT | admitted = limit // reservation |")
    print("|---" * 17 + "|")
    bad = False
    for r in rows:
        overshoot = r["charged"] - r["limit"]
        exact = r["admitted"] == r["limit"] // RESERVATION and r["live"] == 0
        bad |= overshoot > 0 or not exact
        held = f", {r['live']} still held" if r["live"] else ""
        print(f"| {r['backend']} | {r['cycles']:,} | {r['admitted']:,} | {r['refused']:,} | {r['errors']} "
              f"| {r['wall']:.2f} s | {r['rate']:,.0f} | {pct(r['cycle'], 50):.2f} | {pct(r['cycle'], 99):.2f} "
              f"| {pct(r['admitted_cycle'], 50):.2f} | {pct(r['admitted_cycle'], 99):.2f} "
              f"| {pct(r['reserve'], 50):.2f} | {pct(r['reserve'], 99):.2f} | {r['limit']:,} | {r['charged']:,.0f} "
              f"| {overshoot:+,.0f} | {'yes' if exact else 'NO'} ({r['admitted']:,} of {r['limit'] // RESERVATION:,}"
              f"{held}) |")
    if bad:
        print("\nFAIL: overshoot or under-use", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
