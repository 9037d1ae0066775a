"""Wall time of `maestro enqueue` (what cron pays every few minutes), this checkout against another one.

    git worktree add /tmp/maestro-old <commit>
    .venv/bin/python bench/enqueue_time.py --baseline /tmp/maestro-old [--runs 30]

Both trees run with this venv's interpreter as `python -m maestro_py` from their own folder (so each
imports its own code), alternating run by run so a noisy machine weighs on both alike; each side gets a
fresh agent root and one warm-up run. Prints the medians, their ratio, and how many maestro_py modules
each side imports for the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
COUNT = ("import sys, runpy; sys.argv = ['maestro'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('maestro_py', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print(sum(1 for m in sys.modules if m == 'maestro_py' or m.startswith('maestro_py.')), file=sys.stderr)")


def enqueue(tree: Path, root: Path) -> float:
    """Seconds for one `maestro enqueue hello` from `tree`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(root), "enqueue", "hello", "--source", "bench"],
                   cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def modules_loaded(tree: Path, root: Path) -> int:
    """maestro_py modules in sys.modules after one enqueue from `tree`."""
    out = subprocess.run([sys.executable, "-c", COUNT, "--root", str(root), "enqueue", "hello"], cwd=tree,
                         check=True, capture_output=True, text=True)
    return int(out.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of maestro_py")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this": HERE}
    with tempfile.TemporaryDirectory() as scratch:
        roots = {}
        for name, tree in trees.items():
            roots[name] = Path(scratch) / name
            subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(roots[name]), "init"], cwd=tree,
                           check=True, stdout=subprocess.DEVNULL)
            enqueue(tree, roots[name])  # warm-up: page cache, .pyc files
        samples: dict[str, list[float]] = {name: [] for name in trees}
        for i in range(args.runs):
            for name in (("baseline", "this") if i % 2 == 0 else ("this", "baseline")):
                samples[name].append(enqueue(trees[name], roots[name]))
        report = {name: {"median_ms": round(statistics.median(s) * 1000, 1), "min_ms": round(min(s) * 1000, 1),
                         "max_ms": round(max(s) * 1000, 1), "modules": modules_loaded(trees[name], roots[name])}
                  for name, s in samples.items()}
    report["ratio_this_vs_baseline"] = round(report["this"]["median_ms"] / report["baseline"]["median_ms"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
