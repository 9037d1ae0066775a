"""`maestro tick log` against the real CLI: the loopback API fake scripts tool calls (one the cadence's policy denies),
the daemon runs them, and `tick log` (the real entry point, a process of its own) prints the run as a person reads it,
after the run and while it runs (`--follow`, ending by itself when the tick settles)."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from maestro_py.bus.logview import escape
from maestro_py.paths import Folder
from maestro_py.redact import MASK
from tests.e2e.fake_api import FAKE_KEY, REPLY_TEXT, FakeMessagesAPI
from tests.e2e.support import MakeAgent
from tests.fakes import REPO, tick_ids, wait_for

# Bash for echo and sleep only: a `cat` of a file outside the agent's folder is denied.
POLICY = '[memo]\ntools = ["Read", "Bash"]\nallow = ["Bash(echo *)", "Bash(sleep *)"]\nsandbox = "off"\n'


def outside_file(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "canary.txt").write_text(f"CANARY-{secrets.token_hex(6)}")
    return folder / "canary.txt"


def test_tick_log_prints_a_finished_run_with_its_tool_lines_denial_and_cost(
        make_agent: MakeAgent, fake_api: FakeMessagesAPI, tmp_path: Path) -> None:
    canary = outside_file(tmp_path)
    agent = make_agent({"memo": "Do the duty. [[fake:calls:duty]]"}, POLICY)
    fake_api.register_calls("duty", [
        {"id": "toolu_cat", "name": "Bash", "input": {"command": f"cat {canary}"}},
        {"id": "toolu_echo", "name": "Bash", "input": {"command": "echo hello"}},
    ])
    tick = agent.enqueue("memo")
    agent.run_once()
    assert tick_ids(agent.layout, Folder.DONE) == [tick]

    shown = agent.maestro("tick", "log", tick[-6:])  # the suffix the log names carry
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    print(shown.stdout)
    (log,) = agent.stdout_logs()
    assert shown.stderr == f"==> attempt 1 of tick {tick} (memo): {log}\n"
    assert lines[0].startswith("· session: model ") and "tools: Bash, Read" in lines[0]
    call = lines.index(f"→ Bash: cat {canary}")
    (denied,) = [i for i, line in enumerate(lines) if line.startswith("✗ Bash denied: ")]
    assert call < denied and "outside the working directories" in lines[denied]
    assert lines.index("→ Bash: echo hello") < lines.index("← Bash ok: hello")
    assert not [line for line in lines if line.startswith("← Bash error")]  # the denial says it, once
    row = agent.ledger()[-1]
    result = lines.index(REPLY_TEXT) + 1
    assert re.fullmatch(rf"= result success, \d+ turns, {row['total_tokens']:,} tokens, \${row['cost_usd']:.4f}, "
                        r"\d+\.\d s", lines[result]), lines[result]
    assert lines[result + 1:] == [f"✗ 1 call denied: Bash: cat {canary}"]
    assert canary.read_text() not in shown.stdout and FAKE_KEY not in shown.stdout + shown.stderr

    assert agent.maestro("tick", "log", tick, "--attempt", "1").stdout == shown.stdout
    raw = agent.maestro("tick", "log", tick, "--raw")
    assert raw.returncode == 0 and raw.stdout == log.read_text()
    err = agent.maestro("tick", "log", tick, "--stderr")
    stderr_log = log.with_name(log.name.replace(".stdout.", ".stderr."))
    assert err.returncode == 0 and err.stdout == "".join(
        f"{escape(line)}\n" for line in (stderr_log.read_text().splitlines() if stderr_log.exists() else []))
    other = agent.maestro("tick", "log", tick, "--attempt", "2")
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr == f"maestro: tick {tick} has no log of attempt 2 (runs with a log: attempt 1)\n"


def test_tick_log_follows_a_live_run_as_lines_arrive_until_it_settles(
        make_agent: MakeAgent, fake_api: FakeMessagesAPI, tmp_path: Path) -> None:
    canary = outside_file(tmp_path)
    key = f"sk-ant-api03-LIVE{secrets.token_hex(8)}"  # printed by the run: in its log until the daemon redacts it
    agent = make_agent({"memo": "Do the duty. [[fake:calls:slow]]"}, POLICY)
    fake_api.register_calls("slow", [
        {"id": "toolu_key", "name": "Bash", "input": {"command": f"echo {key}"}},
        {"id": "toolu_cat", "name": "Bash", "input": {"command": f"cat {canary}"}},
        {"id": "toolu_sleep", "name": "Bash", "input": {"command": "true && sleep 8"}},
    ])
    tick = agent.enqueue("memo")
    daemon = agent.start("--once")
    log = wait_for(lambda: next((p for p in agent.stdout_logs() if b'"tool_use"' in p.read_bytes()), None),
                   what="the run's first tool call in its log", timeout=60)
    assert tick_ids(agent.layout, Folder.CLAIMED) == [tick]
    assert key.encode() in log.read_bytes()  # a live log is not redacted yet

    follow = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(agent.root), "tick", "log", tick,
                               "--follow"], env=agent.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received: list[tuple[str, bool]] = []  # each line as it arrived, and whether the tick was still running then

    def read() -> None:
        assert follow.stdout is not None
        for raw in follow.stdout:
            received.append((raw.decode().rstrip("\n"), tick_ids(agent.layout, Folder.CLAIMED) == [tick]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    assert follow.wait(timeout=90) == 0, follow.stderr.read() if follow.stderr else ""
    reader.join(timeout=10)
    assert daemon.wait(timeout=60) == 0
    print(f"followed for {time.monotonic() - started:.1f} s:", *received, sep="\n")
    lines = [line for line, _ in received]
    live = dict(received)

    assert live["→ Bash: true && sleep 8"] is True  # printed while the run was still going
    assert lines[-2].startswith("= result success, ") and lines[-1] == f"✗ 1 call denied: Bash: cat {canary}"
    assert f"→ Bash: echo {MASK}" in lines and f"← Bash ok: {MASK}" in lines
    assert key not in "\n".join(lines) and FAKE_KEY not in "\n".join(lines)
    assert len(lines) == len(set(lines))  # no line twice, across the log's rewrite at settle
    assert follow.stderr is not None
    assert follow.stderr.read().decode().splitlines()[-1] == f"==> tick {tick} is in done/"
    assert key.encode() not in log.read_bytes()  # the daemon redacted the log at settle
    # what was followed is the run's transcript, as `tick log` prints it once the run is over
    assert agent.maestro("tick", "log", tick).stdout.splitlines() == lines
