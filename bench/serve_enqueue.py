"""Accepted enqueues per second through `maestro serve` over HTTP, beside `maestro enqueue` and `Bus.enqueue`.

    .venv/bin/python bench/serve_enqueue.py [--ticks 1000] [--cli-ticks 100] [--clients 16] [--rounds 3]

One agent root, one cadence, one real `maestro serve --port 0` process (the installed code, a token set, so
every request is authenticated as in production). Each round runs, in an order that rotates between rounds,
and each from an empty inbox (the ceiling's count scans it):

- `Bus.enqueue` called in this process, `--ticks` times (the floor: one durable tick file each);
- HTTP, one client on one keep-alive connection, `--ticks` POSTs one after another;
- HTTP, `--clients` threads each on its own keep-alive connection, `--ticks` POSTs in all;
- `maestro enqueue` as a subprocess, `--cli-ticks` times one after another (what cron runs).

Only answers 202 count as accepted (the ceiling is set far above the run). Latency is per call, from just
before the request (or the call, or the process start) to the parsed answer (its exit); p50 and p99 are over
every call of every round, the rate is the median round's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from maestro_py.bus.store import Bus  # noqa: E402
from maestro_py.paths import Folder, Layout  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+) ")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def clear(layout: Layout) -> None:
    for folder in (Folder.INBOX, Folder.TMP):
        for path in layout.folder(folder).iterdir():
            path.unlink()


def direct(layout: Layout, n: int) -> tuple[int, float, list[float]]:
    bus = Bus(layout, max_inbox=10_000_000)
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        bus.enqueue("hello", source="bench", payload={"n": i})
        lat.append(time.perf_counter() - t0)
    return n, time.perf_counter() - start, lat


def post_many(port: int, n: int, offset: int, lat: list[float], accepted: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    ok = 0
    for i in range(n):
        body = json.dumps({"payload": {"n": offset + i}, "source": "bench"})
        t0 = time.perf_counter()
        conn.request("POST", "/v1/cadences/hello/ticks", body, headers)
        resp = conn.getresponse()
        json.loads(resp.read())
        lat.append(time.perf_counter() - t0)
        ok += resp.status == 202
    conn.close()
    accepted.append(ok)


def http_run(port: int, n: int, clients: int) -> tuple[int, float, list[float]]:
    lat: list[float] = []
    accepted: list[int] = []
    share = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=post_many, args=(port, share[i], sum(share[:i]), lat, accepted))
               for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(accepted), time.perf_counter() - start, lat


def cli_run(layout: Layout, n: int, env: dict[str, str]) -> tuple[int, float, list[float]]:
    lat = []
    ok = 0
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "enqueue", "hello",
                               "--source", "bench", "--payload", json.dumps({"n": i})],
                              env=env, capture_output=True, text=True, cwd=REPO)
        lat.append(time.perf_counter() - t0)
        ok += proc.returncode == 0
    return ok, time.perf_counter() - start, lat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=1000)
    parser.add_argument("--cli-ticks", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="maestro-serve-bench-"))
    layout = Layout(folder / "agent")
    layout.ensure()
    layout.prompt_file("hello").parent.mkdir(exist_ok=True)
    layout.prompt_file("hello").write_text("hi")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAESTRO_", "ANTHROPIC_", "CLAUDE_"))}
    env.update({"MAESTRO_MAX_INBOX": "10000000", "MAESTRO_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(REPO)})
    log = open(folder / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "serve", "--port", "0"],
                              env=env, stderr=log, stdout=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not (found := LISTENING.search((folder / "serve.log").read_text())):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"maestro serve did not start: {(folder / 'serve.log').read_text()}")
            time.sleep(0.05)
        port = int(found[1])
        contenders = {
            "`Bus.enqueue` in-process": lambda: direct(layout, args.ticks),
            "HTTP `POST`, 1 client (keep-alive)": lambda: http_run(port, args.ticks, 1),
            f"HTTP `POST`, {args.clients} concurrent clients": lambda: http_run(port, args.ticks, args.clients),
            "`maestro enqueue` (a process per tick)": lambda: cli_run(layout, args.cli_ticks, env),
        }
        results: dict[str, dict[str, list[float]]] = {name: {"rate": [], "lat": [], "n": []} for name in contenders}
        names = list(contenders)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                clear(layout)
                accepted, wall, lat = contenders[name]()
                results[name]["rate"].append(accepted / wall)
                results[name]["lat"].extend(lat)
                results[name]["n"].append(accepted)
                print(f"round {r + 1}: {name}: {accepted} accepted, {accepted / wall:,.0f}/s", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    load = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    print(f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, nproc {os.cpu_count()}, load average "
          f"{load:.2f} at the end, git commit {commit.strip()}; {args.rounds} rounds, order rotated each round.\n")
    print("| Path | accepted per round | accepted/s (median round) | every round | p50 latency | p99 latency |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(results[names[0]]["rate"])
    for name in names:
        res = results[name]
        rate = statistics.median(res["rate"])
        print(f"| {name} | {int(statistics.median(res['n'])):,} | {rate:,.0f} (×{rate / base:.2f} of direct) | "
              f"{', '.join(f'{x:,.0f}' for x in res['rate'])} | {percentile(res['lat'], 50) * 1000:.2f} ms | "
              f"{percentile(res['lat'], 99) * 1000:.2f} ms |")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
