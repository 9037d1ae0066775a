"""The real claude CLI (2.1.337) against the loopback fake: the behaviours the daemon relies on.

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
    # Exactly one streaming POST (the title request is off via NONESSENTIAL_TRAFFIC), and nothing else:
    # 2.1.337 no longer probes with `HEAD /` first (2.1.197 did).
    assert [(r.method, r.path) for r in fake_api.requests] == [("POST", "/v1/messages")]
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


DEGRADED_400_POSTS = 6
"""POSTs CLI 2.1.337 spends on a 400: the request, then five re-sends with betas and features dropped
(thinking-token-count, thinking display, then tool search with the deferred tools loaded…)."""


def test_directive_400_is_not_retried(run_claude: Run, fake_api: FakeMessagesAPI) -> None:
    """A 400 is not retried by the retry budget: the CLI only re-sends degraded variants, a fixed number."""
    counts = []
    for retries in ("0", "2"):
        fake_api.clear()
        run = run_claude("[[fake:400]] broken request", env={"CLAUDE_CODE_MAX_RETRIES": retries})
        assert run.returncode == 1
        result = run.json
        assert result["is_error"] is True
        assert result["api_error_status"] == 400
        assert result["result"] == "API Error: 400 messages: field required (fake)"
        assert run.wall < 15  # no backoff between the variants
        counts.append(fake_api.post_count())
    assert counts == [DEGRADED_400_POSTS, DEGRADED_400_POSTS]  # the same, whatever the retry budget


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
    # 2.1.337 meters the cut stream too (its message_start's usage) on top of the fallback's reply;
    # 2.1.197 counted the fallback only, and had all zeros in the top-level usage.
    tokens_in, tokens_out = _model_usage(result)
    assert tokens_in == 2 * INPUT_TOKENS and tokens_out >= OUTPUT_TOKENS
    assert result["usage"]["input_tokens"] == 2 * INPUT_TOKENS
    cost = sum(u["costUSD"] for u in result["modelUsage"].values())
    assert result["total_cost_usd"] == pytest.approx(cost) and cost > EXPECTED_COST_USD
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
                    if child.cmdline() == ["sleep", "300"]:  # the fake's `true && sleep 300`
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
    """tool_sleep makes the CLI run `sleep 300` through Bash, in a new session (what orphaning needs).

    (The fake asks for `true && sleep 300`: 2.1.337 refuses a standalone `sleep 300`.)"""
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


# ---- scripted tool calls: what the tools gave back ------------------------------------------------

CANARY = "CANARY-7c1e94-never-send-me"


def test_scripted_read_inside_cwd_comes_back(run_claude: Run, fake_api: FakeMessagesAPI, claude_cwd: Path) -> None:
    """A scripted Read of a file in the working directory runs: its content reaches the API."""
    (claude_cwd / "notes.txt").write_text("inside-the-cwd-42\n")
    fake_api.register_calls("peek", [{"name": "Read", "input": {"file_path": str(claude_cwd / "notes.txt")}}])
    run = run_claude("read my notes [[fake:calls:peek]]")
    assert run.returncode == 0, run.stderr
    result = run.json
    assert result["is_error"] is False and result["result"] == REPLY_TEXT
    assert result["permission_denials"] == []
    [tool] = fake_api.tool_results()
    assert tool["tool_name"] == "Read" and tool["is_error"] is False
    assert tool["input"] == {"file_path": str(claude_cwd / "notes.txt")}
    assert "inside-the-cwd-42" in tool["content"]
    posts = fake_api.posts()
    assert [p.mode for p in posts] == ["calls:peek", "calls:peek"]  # the calls, then the final text
    assert fake_api.requests_containing("inside-the-cwd-42") == [posts[1]]


def test_denied_reads_come_back_as_errors(
    run_claude: Run, fake_api: FakeMessagesAPI, claude_cwd: Path, tmp_path: Path
) -> None:
    """Reads outside the working directory (Read, and Bash `cat`) are denied under --print: each comes
    back as an is_error tool_result, is listed in permission_denials, and the canary never reaches the API."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "canary.txt"
    secret.write_text(CANARY + "\n")
    (claude_cwd / "ok.txt").write_text("fine\n")
    fake_api.register_calls("snoop", [
        {"name": "Read", "input": {"file_path": str(secret)}},
        {"name": "Bash", "input": {"command": f"cat {secret}"}},
        {"name": "Read", "input": {"file_path": str(claude_cwd / "ok.txt")}},
    ])
    run = run_claude("look around [[fake:calls:snoop]]", "--permission-mode", "dontAsk")
    assert run.returncode == 0, run.stderr
    result = run.json
    assert result["is_error"] is False and result["subtype"] == "success"  # a denial does not fail the run
    by_input = {json.dumps(t["input"], sort_keys=True): t for t in fake_api.tool_results()}
    assert len(by_input) == 3
    denied_read = by_input[json.dumps({"file_path": str(secret)})]
    denied_bash = by_input[json.dumps({"command": f"cat {secret}"})]
    allowed = by_input[json.dumps({"file_path": str(claude_cwd / "ok.txt")})]
    assert (denied_read["tool_name"], denied_read["is_error"]) == ("Read", True)
    assert (denied_bash["tool_name"], denied_bash["is_error"]) == ("Bash", True)
    assert "don't ask mode" in denied_read["content"] and "don't ask mode" in denied_bash["content"]
    assert (allowed["is_error"], "fine" in allowed["content"]) == (False, True)
    denials = result["permission_denials"]
    assert sorted((d["tool_name"], json.dumps(d["tool_input"], sort_keys=True)) for d in denials) == sorted([
        ("Read", json.dumps({"file_path": str(secret)})),
        ("Bash", json.dumps({"command": f"cat {secret}"})),
    ])
    assert {d["tool_use_id"] for d in denials} == {denied_read["tool_use_id"], denied_bash["tool_use_id"]}
    assert fake_api.requests_containing(CANARY) == []
    assert CANARY not in run.stdout


def test_requests_containing_sees_a_canary_that_was_read(
    run_claude: Run, fake_api: FakeMessagesAPI, claude_cwd: Path
) -> None:
    """The canary check has teeth: a canary the CLI may read does show up in the next request."""
    (claude_cwd / "canary.txt").write_text(CANARY + "\n")
    fake_api.register_calls("leak", [{"name": "Read", "input": {"file_path": str(claude_cwd / "canary.txt")}}])
    run = run_claude("read it [[fake:calls:leak]]")
    assert run.returncode == 0, run.stderr
    assert [r.mode for r in fake_api.requests_containing(CANARY)] == ["calls:leak"]
    assert CANARY in fake_api.tool_results()[0]["content"]
