"""Wall time of `maestro enqueue` (what cron pays every few minutes) against a bare `python -c 'import click'`.

    .venv/bin/python bench/enqueue_time.py [--runs 20]
    git worktree add /tmp/maestro-old <commit>
    .venv/bin/python bench/enqueue_time.py --baseline /tmp/maestro-old [--runs 40]

Each side is a whole process run with this venv's interpreter: `python -m maestro_py --root <agent> enqueue hello
--source bench` against `python -c 'import click'`, the least any click command can cost (the interpreter's
start-up plus click). They alternate pair by pair, the order swapped every other pair, so a noisy machine weighs
on both alike; the agent root is made by `maestro init` and each side gets one warm-up run (page cache, .pyc
files). With `--baseline`, another checkout's `maestro enqueue` (run from its own folder, so it imports its own
code, on an agent root of its own) joins each round too. Prints the medians, the ratios, and how many
maestro_py modules each maestro side imports for the command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
# As cron runs it: with the .pyc files an installed package has (pip compiles them; the warm-up run writes them
# here), whatever this shell says. Without them every run compiles maestro_py from source, and click (whose .pyc
# pip wrote) does not: that would time the compiler, not the imports.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
COUNT = ("import sys, runpy; sys.argv = ['maestro'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('maestro_py', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print(sum(1 for m in sys.modules if m == 'maestro_py' or m.startswith('maestro_py.')), file=sys.stderr)")


def timed(argv: list[str], cwd: Path) -> float:
    """Seconds from spawning `argv` to its exit (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def enqueue_argv(root: Path) -> list[str]:
    return [sys.executable, "-m", "maestro_py", "--root", str(root), "enqueue", "hello", "--source", "bench"]


def modules_loaded(tree: Path, root: Path) -> int:
    """maestro_py modules in sys.modules after one enqueue from `tree`."""
    out = subprocess.run([sys.executable, "-c", COUNT, "--root", str(root), "enqueue", "hello"], cwd=tree,
                         env=ENV, check=True, capture_output=True, text=True)
    return int(out.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="alternating rounds (default 20)")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of maestro_py to run too")
    args = parser.parse_args()
    trees = {"this": HERE}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        sides: dict[str, tuple[list[str], Path]] = {"click": ([sys.executable, "-c", "import click"], HERE)}
        for name, tree in trees.items():
            root = Path(scratch) / name
            subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(root), "init"], cwd=tree,
                           env=ENV, check=True, stdout=subprocess.DEVNULL)
            sides[name] = (enqueue_argv(root), tree)
        for argv, cwd in sides.values():
            timed(argv, cwd)  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for i in range(args.runs):
            for name in (order if i % 2 == 0 else order[::-1]):
                samples[name].append(timed(*sides[name]))
        report: dict[str, object] = {
            name: {"median_ms": round(statistics.median(s) * 1000, 1), "min_ms": round(min(s) * 1000, 1),
                   "max_ms": round(max(s) * 1000, 1)} for name, s in samples.items()}
        for name, tree in trees.items():
            report[name]["modules"] = modules_loaded(tree, Path(scratch) / name)  # type: ignore[index]
    click_ms = report["click"]["median_ms"]  # type: ignore[index]
    report["runs"] = args.runs
    report["ratio_this_vs_click"] = round(report["this"]["median_ms"] / click_ms, 2)  # type: ignore[index]
    if "baseline" in trees:
        report["ratio_baseline_vs_click"] = round(report["baseline"]["median_ms"] / click_ms, 2)  # type: ignore[index]
        report["ratio_this_vs_baseline"] = round(
            report["this"]["median_ms"] / report["baseline"]["median_ms"], 3)  # type: ignore[index]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
