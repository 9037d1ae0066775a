"""Spawns under failure, with the real claude CLI against the loopback Messages API fake.

    .venv/bin/python bench/reliability_run.py [--scale 60]

Three scenarios, each a real `maestro run` daemon:
  500     a cadence whose API always answers 500, triggered every (scaled) minute for one (scaled) hour;
  401     an invalid key, ten ticks over two cadences, live cap 4;
  burst   twenty identical ticks dropped at once for one cadence (overlap = skip);
  limit   a subscription at its usage limit (the CLI logged in by an OAuth token; the API answers 429 with
          `anthropic-ratelimit-unified-status: rejected`, reset two hours away), ticks over three cadences
          every (scaled) minute for one (scaled) hour. With --baseline DIR (a checkout of an earlier commit,
          e.g. `git worktree add /tmp/maestro-old 9dc9b73`) the same hour runs on that code too.
Time is compressed by --scale (60: one hour runs in 60 s): every duration setting (backoff, circuit open
period) and the trigger period are divided by it, so the counts are those of an hour at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from fake_api import FakeMessagesAPI  # noqa: E402

CLAUDE = REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"


def base_env(api: FakeMessagesAPI, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC", "CLAUDE", "MAESTRO_"))}
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), ANTHROPIC_BASE_URL=api.url,
               ANTHROPIC_API_KEY="sk-ant-bench-0123456789abcdef", CLAUDE_BIN=str(CLAUDE),
               DISABLE_AUTOUPDATER="1", PYTHONPATH=str(REPO), MAESTRO_KILL_GRACE_SECONDS="1")
    env.update(extra)
    return env


def maestro(root: Path, env: dict[str, str], *args: str) -> str:
    code = Path(env.get("PYTHONPATH", REPO))
    out = subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(root), *args], env=env,
                         capture_output=True, text=True, timeout=60, cwd=code)
    return out.stdout.strip()


def daemon(root: Path, env: dict[str, str]) -> subprocess.Popen:
    code = Path(env.get("PYTHONPATH", REPO))
    return subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(root), "run"], env=env,
                            cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def spawns(root: Path) -> int:
    ledger = root / "state" / "cost-ledger.jsonl"
    return len(ledger.read_text().splitlines()) if ledger.exists() else 0


def setup(tmp: Path, name: str, prompts: dict[str, str], registry: str = "") -> Path:
    root = tmp / name
    (root / "cadences").mkdir(parents=True)
    for cadence, text in prompts.items():
        (root / "cadences" / f"{cadence}.md").write_text(text)
    (root / "cadences.toml").write_text(registry)
    return root


def scenario_500(tmp: Path, scale: float) -> dict[str, object]:
    root = setup(tmp, "s500", {"flaky": "Summarise the inbox. [[fake:500]]"})
    with FakeMessagesAPI() as api:
        env = base_env(api, tmp / "home500",
                       MAESTRO_BACKOFF_SECONDS=",".join(f"{s / scale:g}" for s in (0, 30, 120)),
                       MAESTRO_CIRCUIT_OPEN_SECONDS=f"{1800 / scale:g}",
                       MAESTRO_CIRCUIT_MAX_OPEN_SECONDS=f"{21600 / scale:g}")
        proc = daemon(root, env)
        hour = 3600 / scale
        start = time.monotonic()
        triggers = 0
        while time.monotonic() - start < hour:  # cron: one tick per minute
            maestro(root, env, "enqueue", "flaky", "--source", "cron")
            triggers += 1
            time.sleep(max(0.0, start + triggers * 60 / scale - time.monotonic()))
        stop(proc)
        posts = api.post_count()
    circuit = root / "state" / "cadence-bus" / "circuit-open.json"
    return {"triggers_per_hour": triggers, "spawns_per_hour": spawns(root), "api_posts": posts,
            "circuit": json.loads(circuit.read_text())["open"]["flaky"]["state"] if circuit.exists() else None,
            "naive_cron_spawns_per_hour": triggers}


def scenario_401(tmp: Path) -> dict[str, object]:
    root = setup(tmp, "s401", {"memo": "Write the memo.", "brief": "Write the brief."},
                 "[memo]\noverlap = 'allow'\n[brief]\noverlap = 'allow'\n")
    with FakeMessagesAPI() as api:
        env = base_env(api, tmp / "home401", ANTHROPIC_API_KEY="bad-key-0123456789",
                       MAESTRO_MAX_LIVE_SUBSESSIONS="4")
        for i in range(5):
            maestro(root, env, "enqueue", "memo", "--payload", json.dumps({"n": i}))
            maestro(root, env, "enqueue", "brief", "--payload", json.dumps({"n": i}))
        proc = daemon(root, env)
        time.sleep(15)
        stop(proc)
        posts = api.post_count()
    inbox = len(list((root / "state" / "cadence-bus" / "inbox").iterdir()))
    return {"ticks": 10, "spawns": spawns(root), "api_posts": posts, "still_queued": inbox}


def scenario_burst(tmp: Path) -> dict[str, object]:
    root = setup(tmp, "sburst", {"sync": "Sync the calendar. [[fake:slow]]"})
    with FakeMessagesAPI() as api:
        api.slow_seconds = 3.0
        env = base_env(api, tmp / "homeburst")
        proc = daemon(root, env)
        time.sleep(1.0)
        procs = [subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(root), "enqueue", "sync",
                                   "--source", "storm"], env=env, cwd=REPO, stdout=subprocess.DEVNULL)
                 for _ in range(20)]
        for p in procs:
            p.wait(timeout=60)
        deadline = time.monotonic() + 60
        done = root / "state" / "cadence-bus" / "done"
        while time.monotonic() < deadline and len(list(done.iterdir())) < 20:
            time.sleep(0.2)
        stop(proc)
    return {"ticks": 20, "spawns": spawns(root), "settled": len(list(done.iterdir()))}


def scenario_limit(tmp: Path, scale: float, code: Path, name: str) -> dict[str, object]:
    cadences = ("inbox", "memo", "digest")
    root = setup(tmp, f"slimit-{name}", {c: f"Do the {c}." for c in cadences})
    with FakeMessagesAPI(mode="429") as api:
        api.extra_headers = {"anthropic-ratelimit-unified-status": "rejected",
                             "anthropic-ratelimit-unified-reset": str(int(time.time()) + 7200),
                             "anthropic-ratelimit-unified-representative-claim": "five_hour"}
        env = base_env(api, tmp / f"homelimit-{name}", CLAUDE_CODE_OAUTH_TOKEN="sk-ant-oat01-" + "b" * 60,
                       MAESTRO_PREFER_SUBSCRIPTION_AUTH="1", PYTHONPATH=str(code),
                       MAESTRO_BACKOFF_SECONDS=",".join(f"{s / scale:g}" for s in (0, 30, 120)),
                       MAESTRO_CIRCUIT_OPEN_SECONDS=f"{1800 / scale:g}",
                       MAESTRO_CIRCUIT_MAX_OPEN_SECONDS=f"{21600 / scale:g}")
        env.pop("ANTHROPIC_API_KEY")
        proc = daemon(root, env)
        hour, start, triggers = 3600 / scale, time.monotonic(), 0
        while time.monotonic() - start < hour:
            maestro(root, env, "enqueue", cadences[triggers % 3], "--source", "cron",
                    "--payload", json.dumps({"n": triggers}))
            triggers += 1
            time.sleep(max(0.0, start + triggers * 60 / scale - time.monotonic()))
        stop(proc)
        posts = api.post_count()
    dlq = [p for p in (root / "state" / "cadence-bus" / "dlq").iterdir() if not p.name.endswith(".reason.json")]
    return {"triggers": triggers, "sessions": spawns(root), "api_posts": posts, "dead_lettered": len(dlq)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=60.0)
    parser.add_argument("--only", choices=("500", "401", "burst", "limit"), default=None)
    parser.add_argument("--baseline", type=Path, default=None, help="an earlier checkout for the limit scenario")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        results: dict[str, object] = {"scale": args.scale}
        if args.only in (None, "500"):
            results["always_500"] = scenario_500(tmp, args.scale)
        if args.only in (None, "401"):
            results["invalid_key"] = scenario_401(tmp)
        if args.only in (None, "burst"):
            results["burst_20"] = scenario_burst(tmp)
        if args.only in (None, "limit"):
            results["subscription_limit"] = {"hold": scenario_limit(tmp, args.scale, REPO, "now")}
            if args.baseline is not None:
                results["subscription_limit"]["baseline"] = scenario_limit(tmp, args.scale, args.baseline.resolve(),
                                                                           "baseline")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
