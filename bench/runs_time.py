"""Wall time of `maestro runs` on a 100,000-row ledger, against a bare `python -c 'import click'`.

    .venv/bin/python bench/runs_time.py [--rows 100000] [--runs 20]

A temporary agent root (made by `maestro init`) gets a ledger of ROWS rows shaped as the daemon writes them (five
cadences, `x` one of them; 3 % failed, 1 % unmeasured; a fortnight of runs), and tick files for the newest 2,000
runs (in `done/`, a failed tick's last run in `dlq/`), so the listed runs' ticks are found as on a real root. Each
side is a whole process run with this venv's interpreter, and the sides alternate round by round, the order
reversed every other round, after one warm-up run each:

- `python -c 'import click'`: the least any click command costs (the interpreter's start-up plus click);
- `maestro runs`: the last 50 runs;
- `maestro runs -n 20 --cadence x`: the last 20 of one cadence among five;
- `maestro runs -n 20 --cadence rare`: a cadence whose only runs are the ledger's first ten, so the whole file is
  read (the worst case: what reading from the end cannot save).

Prints the medians, the ratios to bare click, and whether `maestro runs` answered in under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from maestro_py.bus.tick import new_id  # noqa: E402
from maestro_py.clock import iso  # noqa: E402
from maestro_py.paths import Folder, Layout  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as installed: with .pyc files
CADENCES = ("memo", "triage", "digest", "x", "sync")
TICK_FILES = 2000
TARGET_S = 1.0


def row(tick: str, cadence: str, attempt: int, at: datetime, rng: random.Random) -> dict:
    """One ledger row as the daemon writes it (session/metering, daemon/settle)."""
    failed = rng.random() < 0.03
    unmeasured = failed and rng.random() < 0.33
    tokens_in, tokens_out = rng.randint(2_000, 60_000), rng.randint(100, 4_000)
    cost = None if unmeasured else round(tokens_in * 3e-6 + tokens_out * 15e-6, 6)
    usage = {"input_tokens": None if unmeasured else tokens_in, "output_tokens": None if unmeasured else tokens_out,
             "cache_read_tokens": None if unmeasured else 0, "cache_creation_tokens": None if unmeasured else 0}
    out = {"ts": iso(at), "tick": tick, "cadence": cadence, "attempt": attempt, "exit_code": 1 if failed else 0,
           "signal": None, "duration_ms": rng.randint(5_000, 300_000), "ok": not failed,
           "session_id": f"{rng.getrandbits(128):032x}", "cost_usd": cost, **usage,
           "total_tokens": None if unmeasured else tokens_in + tokens_out,
           "per_model": {} if unmeasured else {"claude-opus-4-8": {**usage, "cost_usd": cost}},
           "metered": not unmeasured, "reserved_tokens": 20000, "reserved_usd": 0.25,
           "charged_tokens": 20000 if unmeasured else tokens_in + tokens_out, "charged_usd": 0.25 if unmeasured else cost,
           "policy": "0014d1e8def80bde-d33f4368", "denials": {"count": 0, "tools": []}, "run_id": f"r{rng.getrandbits(64):016x}"}
    if unmeasured:
        out["error"] = "no result line: usage unknown, charged its reservation"
    return out


def build(root: Path, rows: int) -> int:
    """The ledger and the newest runs' tick files under `root`; the ledger's size in bytes."""
    layout = Layout(root)
    rng = random.Random(26)
    now = datetime.now(timezone.utc)
    step = timedelta(days=14) / rows
    lines = []
    ticks = []
    for i in range(rows):
        at = now - (rows - i) * step
        cadence = "rare" if i < 10 else CADENCES[rng.randrange(len(CADENCES))]
        tick = new_id(at - timedelta(seconds=1))
        found = row(tick, cadence, 1, at, rng)
        lines.append(json.dumps(found, ensure_ascii=False) + "\n")
        if i >= rows - TICK_FILES:
            ticks.append(found)
    layout.ledger_file.write_text("".join(lines), encoding="utf-8")
    for found in ticks:
        ok = found["ok"]
        entry = {"attempt": 1, "at": found["ts"], "outcome": "ok" if ok else "failed", "reason": None if ok else
                 "API Error: 500", "exit_code": found["exit_code"], **({} if ok else {"failure_class": "transient"})}
        doc = {"id": found["tick"], "cadence": found["cadence"], "source": "cron", "enqueued_at": found["ts"],
               "attempts": 1, "not_before": None, "trusted": True, "payload": {},
               "history": [{"attempt": 0, "at": found["ts"], "outcome": "enqueued", "reason": None}, entry]}
        if not ok:
            doc.update(dlq_reason="attempts exhausted (1/1): API Error: 500", dlq_at=found["ts"])
        folder = layout.folder(Folder.DONE if ok else Folder.DLQ)
        (folder / f"{found['tick']}.json").write_text(json.dumps(doc) + "\n", encoding="utf-8")
    return layout.ledger_file.stat().st_size


def timed(argv: list[str]) -> float:
    """Seconds from spawning `argv` to its exit (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=HERE, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="ledger rows (default 100,000)")
    parser.add_argument("--runs", type=int, default=20, help="alternating rounds (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "agent"
        subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(root), "init"], cwd=HERE, env=ENV,
                       check=True, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        size = build(root, args.rows)
        built_s = time.perf_counter() - started
        maestro = [sys.executable, "-m", "maestro_py", "--root", str(root), "runs"]
        sides = {"click": [sys.executable, "-c", "import click"], "runs": maestro,
                 "runs -n 20 --cadence x": [*maestro, "-n", "20", "--cadence", "x"],
                 "runs -n 20 --cadence rare (whole file)": [*maestro, "-n", "20", "--cadence", "rare"]}
        listed = subprocess.run(maestro, cwd=HERE, env=ENV, check=True, capture_output=True, text=True).stdout
        assert len(listed.splitlines()) >= 51, listed[:2000]  # a header and 50 runs (and a note on unmeasured ones)
        for argv in sides.values():
            timed(argv)  # warm-up: page cache, .pyc files
        samples: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for i in range(args.runs):
            for name in (order if i % 2 == 0 else order[::-1]):
                samples[name].append(timed(sides[name]))
    click_ms = statistics.median(samples["click"]) * 1000
    report: dict[str, object] = {"rows": args.rows, "ledger_mb": round(size / 1e6, 1), "built_s": round(built_s, 1),
                                 "rounds": args.runs}
    for name, values in samples.items():
        median = statistics.median(values) * 1000
        report[name] = {"median_ms": round(median, 1), "min_ms": round(min(values) * 1000, 1),
                        "max_ms": round(max(values) * 1000, 1), "ratio_vs_click": round(median / click_ms, 2)}
    report["under_a_second"] = all(max(samples[name]) < TARGET_S for name in ("runs", "runs -n 20 --cadence x"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
