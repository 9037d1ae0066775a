"""The per-tick sub-session overhead alone (`bench/run.py`'s `overhead` section), for comparing two checkouts:

    .venv/bin/python bench/spawn_overhead.py [--rounds 4] [--real]

Prints, per child, the daemon's median cost per tick beyond a bare subprocess of the same child (paired against
the child's own lifetime, so the child's jitter cancels): per cycle (done -> next done) and claimed -> done. Run it
in each checkout (the code it measures is the checkout's own) back to back, on one machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--real", action="store_true", help="also the real CLI against the loopback API fake")
    args = parser.parse_args()
    scratch = run.Scratch()
    try:
        rows = [run.overhead(scratch, "tiny fake claude (sh printf)", run.tiny_claude(scratch.new("tiny")),
                             run.clean_env(), 10, args.rounds)]
        if args.real and run.CLAUDE.exists():
            from fake_api import FakeMessagesAPI

            api = FakeMessagesAPI().start()
            try:
                env = run.hermetic_env(api.url, scratch.new("claude-home"))
                rows.append(run.overhead(scratch, "real claude CLI vs loopback API", run.CLAUDE, env, 5,
                                         max(1, args.rounds // 2)))
            finally:
                api.stop()
        for row in rows:
            print(f"{row.label}: bare {row.bare:.1f} ms; overhead {row.over('cycle'):+.1f} ms/tick (cycle), "
                  f"{row.over('through'):+.1f} ms (claimed->done)")
    finally:
        scratch.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
