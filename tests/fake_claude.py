#!/usr/bin/env python3
"""A stand-in for `claude --print --output-format json`, driven by CLAUDE_CODE_FAKE_* environment variables (in
the CLI's own CLAUDE_CODE_ namespace, which a run's environment allowlist passes, as it does the real CLI's settings).

CLAUDE_CODE_FAKE_MODE: ok | api_error | sleep | orphan | echo_env | echo_stdin | garbage | stderr
Other knobs:
  CLAUDE_CODE_FAKE_STATUS        api_error: api_error_status (empty: null)
  CLAUDE_CODE_FAKE_SLEEP         sleep: seconds before the ok result; orphan: seconds before exiting (default: forever)
  CLAUDE_CODE_FAKE_PIDFILE       orphan: where the detached grandchild's pid is written
  CLAUDE_CODE_FAKE_TOOL          orphan: the detached command, as a JSON list (default ["sleep", "300"])
  CLAUDE_CODE_FAKE_ENV_KEYS      echo_env: comma-separated variable names to report
  CLAUDE_CODE_FAKE_BYTES         stderr: how many bytes to write (default 10000)
  CLAUDE_CODE_FAKE_CUT           ok: report top-level usage as zeros (the non-streaming fallback's shape)
  CLAUDE_CODE_FAKE_SIGLOG        if set, SIGTERM is caught and logged here instead of ending the process
  CLAUDE_CODE_FAKE_READYFILE     written once stdin is read and signal handlers are installed
  CLAUDE_CODE_FAKE_COUNT         a line "<pid> <mode>" is appended here per run (spawn counting); when the prompt
                            carries a tick id, the line is "<pid> tick=<id> <mode>" (runs per tick)
A directive in the prompt, [[fake_claude:MODE]] or [[fake_claude:MODE:N]], overrides CLAUDE_CODE_FAKE_MODE.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

SESSION_ID = str(uuid.uuid4())


def result(text: str, *, is_error: bool = False, status: int | None = None, billed: bool = True) -> dict:
    """A result object shaped like the real CLI's json output."""
    cut = os.environ.get("CLAUDE_CODE_FAKE_CUT") == "1"
    tokens_in, tokens_out = (1234, 56) if billed else (0, 0)
    obj: dict = {
        "type": "result",
        "subtype": "success",
        "is_error": is_error,
        "duration_ms": 111,
        "duration_api_ms": 95,
        "num_turns": 1,
        "result": text,
        "session_id": SESSION_ID,
        "total_cost_usd": 0.00757 if billed else 0,
        "usage": {
            "input_tokens": 0 if cut else tokens_in,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0 if cut else tokens_out,
            "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            "service_tier": "standard",
        },
        "modelUsage": {},
        "permission_denials": [],
        "uuid": str(uuid.uuid4()),
    }
    if is_error:
        obj["api_error_status"] = status
    if billed:
        obj["modelUsage"] = {
            "claude-opus-4-8": {
                "inputTokens": tokens_in,
                "outputTokens": tokens_out,
                "cacheReadInputTokens": 0,
                "cacheCreationInputTokens": 0,
                "webSearchRequests": 0,
                "costUSD": 0.00757,
                "contextWindow": 200000,
                "maxOutputTokens": 32000,
            }
        }
    return obj


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def on_term(_signum: int, _frame: object) -> None:
    with open(os.environ["CLAUDE_CODE_FAKE_SIGLOG"], "a") as fh:
        fh.write("TERM\n")


def main() -> int:
    # Like the real CLI with no argv prompt: consume stdin to EOF before doing anything.
    data = sys.stdin.buffer.read()
    if os.environ.get("CLAUDE_CODE_FAKE_SIGLOG"):
        signal.signal(signal.SIGTERM, on_term)
    if os.environ.get("CLAUDE_CODE_FAKE_READYFILE"):
        write_atomic(os.environ["CLAUDE_CODE_FAKE_READYFILE"], str(os.getpid()))
    mode = os.environ.get("CLAUDE_CODE_FAKE_MODE", "ok")
    # A prompt may pick its own behaviour, so one daemon can run cadences that behave differently:
    # [[fake_claude:MODE]] or [[fake_claude:MODE:STATUS]] / [[fake_claude:sleep:SECONDS]].
    directive = re.search(rb"\[\[fake_claude:([a-z_]+)(?::([0-9.]+))?\]\]", data)
    if directive:
        mode = directive[1].decode()
        if directive[2]:
            key = "CLAUDE_CODE_FAKE_SLEEP" if mode in ("sleep", "orphan") else "CLAUDE_CODE_FAKE_STATUS"
            os.environ[key] = directive[2].decode()
    if os.environ.get("CLAUDE_CODE_FAKE_COUNT"):
        tick = re.search(rb'"tick_id": "([A-Za-z0-9._-]+)"', data)
        which = f" tick={tick[1].decode()}" if tick else ""
        with open(os.environ["CLAUDE_CODE_FAKE_COUNT"], "a") as fh:
            fh.write(f"{os.getpid()}{which} {mode}\n")

    if mode == "ok":
        emit(result("hi there"))
        return 0
    if mode == "api_error":
        raw = os.environ.get("CLAUDE_CODE_FAKE_STATUS", "")
        status = int(raw) if raw else None
        emit(result(f"API Error: {status} Internal server error (fake)", is_error=True, status=status, billed=False))
        return 1
    if mode == "sleep":
        # Sleep in slices so a caught SIGTERM (CLAUDE_CODE_FAKE_SIGLOG) does not end the wait early.
        end = time.monotonic() + float(os.environ.get("CLAUDE_CODE_FAKE_SLEEP", "1"))
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        emit(result("slept"))
        return 0
    if mode == "orphan":
        # The real CLI's Bash tool runs in its own session, so a process-group kill misses it.
        command = json.loads(os.environ.get("CLAUDE_CODE_FAKE_TOOL", '["sleep", "300"]'))
        tool = subprocess.Popen(
            ["setsid", *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        write_atomic(os.environ["CLAUDE_CODE_FAKE_PIDFILE"], str(tool.pid))
        raw = os.environ.get("CLAUDE_CODE_FAKE_SLEEP")
        if raw is None:
            while True:
                time.sleep(3600)
        time.sleep(float(raw))
        emit(result("left a tool running"))
        # os._exit: do not let Popen's bookkeeping wait for the tool at interpreter shutdown.
        sys.stdout.flush()
        os._exit(0)
    if mode == "echo_env":
        keys = [k for k in os.environ.get("CLAUDE_CODE_FAKE_ENV_KEYS", "").split(",") if k]
        emit(result(json.dumps({k: os.environ.get(k) for k in keys})))
        return 0
    if mode == "echo_stdin":
        emit(result(json.dumps({"len": len(data), "sha256": hashlib.sha256(data).hexdigest()})))
        return 0
    if mode == "garbage":
        sys.stdout.write("this is not json\n{also not json\n")
        return 0
    if mode == "stderr":
        n = int(os.environ.get("CLAUDE_CODE_FAKE_BYTES", "10000"))
        # Distinct content per position so a test can check exactly which bytes the tail holds.
        payload = "".join(chr(ord("a") + i % 26) for i in range(n))
        sys.stderr.write(payload)
        sys.stderr.flush()
        return 2
    sys.stderr.write(f"fake_claude: unknown CLAUDE_CODE_FAKE_MODE {mode!r}\n")
    return 64


if __name__ == "__main__":
    sys.exit(main())
