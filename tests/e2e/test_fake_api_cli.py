"""The real claude CLI (2.1.197) against the loopback fake: the behaviours the daemon relies on.

Each run takes about a second; every run is bounded by a timeout of at most 30 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from fake_api import EXPECTED_COST_USD, FAKE_KEY, INPUT_TOKENS, OUTPUT_TOKENS, REPLY_TEXT, FakeMessagesAPI
from support import ClaudeRun, kill_tree

Run = Callable[..., ClaudeRun]


def _model_usage(result: dict[str, Any]) -> tuple[int, int]:
    """Input and output tokens summed over ``modelUsage`` (the reliable metering source)."""
    usage = result["modelUsage"].values()
    return sum(u["inputTokens"] for u in usage), sum(u["outputTokens"] for u in usage)


def _assert_no_key(run: ClaudeRun) -> None:
    assert FAKE_KEY not in run.stdout
    assert FAKE_KEY not in run.stderr


def test_ok_reports_usage_and_cost(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    run = run_claude("say hi please")
    assert run.returncode == 0, run.stderr
    result = run.json
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["result"] == REPLY_TEXT
    assert _model_usage(result) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert result["total_cost_usd"] == pytest.approx(EXPECTED_COST_USD, abs=1e-6)
    # HEAD / first, then exactly one streaming POST (the title request is off via NONESSENTIAL_TRAFFIC).
    reqs = fake_api.requests
    assert (reqs[0].method, reqs[0].path) == ("HEAD", "/")
    posts = fake_api.posts()
    assert len(posts) == 1 and posts[0].stream and posts[0].query == "beta=true"
    assert posts[0].headers["x-api-key"] == FAKE_KEY
    _assert_no_key(run)


def test_directive_500_without_retries_fails_fast(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    run = run_claude("please fail [[fake:500]]")
    assert run.returncode == 1
    result = run.json
    assert result["is_error"] is True
    assert result["api_error_status"] == 500
    assert result["total_cost_usd"] == 0
    assert result["modelUsage"] == {}
    assert fake_api.post_count() == 1  # CLAUDE_CODE_MAX_RETRIES=0
    assert fake_api.posts()[0].mode == "500"
    assert run.wall < 15
    _assert_no_key(run)


def test_bad_key_gets_401(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    run = run_claude("say hi please", env={"ANTHROPIC_API_KEY": "bad-key-0000"})
    assert run.returncode == 1
    result = run.json
    assert result["is_error"] is True
    assert result["api_error_status"] == 401
    assert fake_api.post_count() == 1
    assert "bad-key-0000" not in run.stdout


def test_directive_400_is_not_retried(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    run = run_claude("[[fake:400]] broken request", env={"CLAUDE_CODE_MAX_RETRIES": "2"})
    assert run.returncode == 1
    result = run.json
    assert result["is_error"] is True
    assert result["api_error_status"] == 400
    assert fake_api.post_count() == 1  # 400 is never retried, whatever the retry budget


def test_scripted_500_then_ok_is_retried(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    fake_api.script(["500", "ok"])
    run = run_claude("say hi please", env={"CLAUDE_CODE_MAX_RETRIES": "1"})
    assert run.returncode == 0, run.stdout
    assert run.json["is_error"] is False
    assert [p.mode for p in fake_api.posts()] == ["500", "ok"]


def test_cut_stream_falls_back_and_still_meters(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    fake_api.mode = "cut"
    run = run_claude("say hi please")
    assert run.returncode == 0, run.stdout
    result = run.json
    assert result["is_error"] is False
    assert result["result"] == REPLY_TEXT
    assert _model_usage(result) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert result["total_cost_usd"] == pytest.approx(EXPECTED_COST_USD, abs=1e-6)
    # Top-level usage comes from the aborted stream: not a metering source (zeros in 2.1.197).
    assert result["usage"]["output_tokens"] in (0, OUTPUT_TOKENS)
    # The cut streaming request, then the non-streaming fallback.
    assert [p.stream for p in fake_api.posts()] == [True, False]


def test_200kb_prompt_on_stdin(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    prompt = "say hi please\n" + ("lorem ipsum dolor sit amet " * 8000)[:200_000]
    run = run_claude(prompt)
    assert run.returncode == 0, run.stderr
    assert run.json["is_error"] is False
    post = fake_api.posts()[0]
    assert post.body_size > 200_000
    assert "lorem ipsum" in str(post.json["messages"])


def test_key_never_in_output(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    for prompt, args in [
        ("say hi please", ("--output-format", "stream-json", "--verbose")),
        ("say hi please [[fake:403]]", ()),
        ("say hi please [[fake:500]]", ("--output-format", "text")),
    ]:
        run = run_claude(prompt, *args)
        _assert_no_key(run)
        assert FAKE_KEY[-12:] not in run.stdout  # nor a recognisable tail of it
    assert all(p.headers.get("x-api-key") == FAKE_KEY for p in fake_api.posts())


def _wait_for_sleep(cli_pid: int, timeout: float) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(cli_pid).children(recursive=True):
                try:
                    if child.cmdline() == ["sleep", "300"]:
                        return child
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    pytest.fail("the CLI never started the Bash tool's `sleep 300`")


def test_tool_sleep_runs_bash_in_its_own_session(
    claude_bin: str, claude_env: dict[str, str], claude_cwd: Path, fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    """tool_sleep makes the CLI run `sleep 300` through Bash, in a new session (what orphaning needs)."""
    out = open(tmp_path / "stdout", "wb")
    proc = subprocess.Popen(
        [claude_bin, "--print", "--output-format", "json", "--no-session-persistence", "--allowedTools", "Bash"],
        stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL,
        env=claude_env, cwd=claude_cwd, start_new_session=True,
    )
    tool_pids: list[int] = []
    try:
        proc.stdin.write(b"run the long command [[fake:tool_sleep]]")
        proc.stdin.close()
        sleeper = _wait_for_sleep(proc.pid, timeout=20)
        tool_pids = [sleeper.pid, sleeper.ppid()]
        # The tool's bash leads a session of its own: killing the CLI's group would not reach it.
        assert os.getsid(sleeper.pid) != os.getsid(proc.pid)
        assert os.getsid(sleeper.pid) == sleeper.ppid()
        # Kill the tool: the CLI reports it to the model (one more POST) and finishes normally.
        os.kill(sleeper.pid, signal.SIGKILL)
        assert proc.wait(timeout=20) == 0
        out.close()
        result = json.loads((tmp_path / "stdout").read_text())
        assert result["is_error"] is False
        assert result["num_turns"] == 2
        posts = fake_api.posts()
        assert len(posts) == 2
        assert any(t.get("name") == "Bash" for t in posts[0].json["tools"])
        followup = posts[1].json["messages"][-1]["content"]
        assert any(b.get("type") == "tool_result" for b in followup)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        for pid in tool_pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        out.close()
