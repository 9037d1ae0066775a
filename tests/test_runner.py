"""ProcessSpawner against tests/fake_claude.py: real processes, real signals, real log files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import psutil
import pytest

from maestro_py.errors import SpawnError
from maestro_py.redact import MASK
from maestro_py.session.command import SpawnSpec
from maestro_py.session.runner import ProcessSpawner, RunOutcome
from tests.fakes import gone, wait_for

FAKE = Path(__file__).with_name("fake_claude.py")


def spec(tmp_path: Path, mode: str, *, stdin: bytes = b"say hi", timeout: float = 10.0, grace: float = 0.3,
         argv: list[str] | None = None, **env: str) -> SpawnSpec:
    return SpawnSpec(
        argv=argv or [str(FAKE), "--print", "--output-format", "json"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CLAUDE_CODE_FAKE_MODE": mode, **env},
        cwd=tmp_path,
        stdin=stdin,
        stdout_log=tmp_path / "out.log",
        stderr_log=tmp_path / "err.log",
        timeout=timeout,
        grace=grace,
    )


def run(s: SpawnSpec, spawner: ProcessSpawner | None = None) -> RunOutcome:
    outcome = (spawner or ProcessSpawner()).spawn(s).wait(timeout=15)
    assert outcome is not None, "sub-session did not finish"
    return outcome


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    """The content of `path` once it exists."""
    wait_for(path.exists, timeout=timeout, what=f"{path} to appear", interval=0.01)
    return path.read_text()


def test_ok_run_is_metered_from_model_usage(tmp_path: Path) -> None:
    s = spec(tmp_path, "ok")
    out = run(s)
    assert out.ok
    assert (out.exit_code, out.signal, out.timed_out, out.stopped) == (0, None, False, False)
    assert out.result is not None and out.result.text == "hi there"
    u = out.result.usage
    assert (u.input_tokens, u.output_tokens, u.cost_usd) == (1234, 56, 0.00757)
    assert out.killed_pids == []
    assert out.duration_ms > 0
    # stdout kept, private; stderr was empty so its log is gone.
    assert stat.S_IMODE(s.stdout_log.stat().st_mode) == 0o600
    assert not s.stderr_log.exists()
    assert "hi there" in out.tail  # stderr empty: tail comes from stdout


def test_cut_stream_result_is_metered_from_model_usage(tmp_path: Path) -> None:
    out = run(spec(tmp_path, "ok", CLAUDE_CODE_FAKE_CUT="1"))
    assert out.result is not None
    assert out.result.raw["usage"]["input_tokens"] == 0
    assert (out.result.usage.input_tokens, out.result.usage.output_tokens) == (1234, 56)


def test_no_json_means_no_result_and_unknown_usage(tmp_path: Path) -> None:
    out = run(spec(tmp_path, "garbage"))
    assert out.exit_code == 0
    assert out.result is None  # never a result with zero usage
    assert not out.ok
    assert "this is not json" in out.tail


def test_api_error_tail_comes_from_stdout(tmp_path: Path) -> None:
    s = spec(tmp_path, "api_error", CLAUDE_CODE_FAKE_STATUS="529")
    out = run(s)
    assert out.exit_code == 1 and not out.ok
    assert out.result is not None and out.result.is_error is True and out.result.api_error_status == 529
    assert out.result.usage.measured and out.result.usage.cost_usd == 0
    assert "API Error: 529" in out.tail
    assert not s.stderr_log.exists()


def test_stderr_tail_is_last_4096_bytes(tmp_path: Path) -> None:
    s = spec(tmp_path, "stderr", CLAUDE_CODE_FAKE_BYTES="10000")
    out = run(s)
    assert out.exit_code == 2 and out.result is None
    payload = "".join(chr(ord("a") + i % 26) for i in range(10000))
    assert out.tail == payload[-4096:]
    assert not s.stdout_log.exists()  # zero bytes: deleted
    assert stat.S_IMODE(s.stderr_log.stat().st_mode) == 0o600
    assert s.stderr_log.read_text() == payload


def test_large_prompt_arrives_intact_on_stdin(tmp_path: Path) -> None:
    prompt = os.urandom(100 * 1024).hex().encode()  # 200 KB: over the 128 KiB single-argument limit
    out = run(spec(tmp_path, "echo_stdin", stdin=prompt))
    assert out.ok and out.result is not None and out.result.text is not None
    assert json.loads(out.result.text) == {"len": len(prompt), "sha256": hashlib.sha256(prompt).hexdigest()}


def test_env_is_exactly_the_spec_env_and_secrets_are_redacted(tmp_path: Path) -> None:
    key = "sk-ant-api03-" + "A" * 40
    token = "plain-secret-token-value"  # no recognisable shape: known only from the child's env
    s = spec(tmp_path, "echo_env", ANTHROPIC_API_KEY=key, ANTHROPIC_AUTH_TOKEN=token,
             CLAUDE_CODE_FAKE_ENV_KEYS="ANTHROPIC_API_KEY,ANTHROPIC_AUTH_TOKEN,HOME,CLAUDE_CODE_FAKE_MODE")
    out = run(s)
    assert out.ok and out.result is not None and out.result.text is not None
    seen = json.loads(out.result.text)
    assert seen == {"ANTHROPIC_API_KEY": MASK, "ANTHROPIC_AUTH_TOKEN": MASK, "HOME": None,
                    "CLAUDE_CODE_FAKE_MODE": "echo_env"}
    log = s.stdout_log.read_bytes()
    assert key.encode() not in log and token.encode() not in log
    assert MASK.encode() in log
    assert stat.S_IMODE(s.stdout_log.stat().st_mode) == 0o600
    assert key not in out.tail and token not in out.tail


def test_timeout_ends_the_tree_including_a_setsid_tool(tmp_path: Path) -> None:
    pidfile = tmp_path / "tool.pid"
    s = spec(tmp_path, "orphan", timeout=1.0, grace=0.3, CLAUDE_CODE_FAKE_PIDFILE=str(pidfile))
    session = ProcessSpawner().spawn(s)
    tool = int(wait_for_file(pidfile))
    # The pid is written once `setsid` has started; it becomes `sleep` when its exec is through.
    wait_for(lambda: psutil.Process(tool).name() == "sleep", timeout=5, what="the tool exec'd")
    assert os.getsid(tool) == tool != os.getsid(session.pid)  # escaped the CLI's session
    out = session.wait(timeout=10)
    assert out is not None
    assert out.timed_out and not out.stopped
    assert (out.exit_code, out.signal) == (None, signal.SIGTERM)
    assert gone(tool)
    assert tool in out.killed_pids
    assert 1000 <= out.duration_ms < 5000
    assert out.result is None and not out.ok


def test_tool_left_running_after_a_normal_exit_is_killed(tmp_path: Path) -> None:
    # The CLI exits 0 but leaves its detached tool behind; pytest is no subreaper, so the tool is
    # reparented to init and only the watcher's remembered snapshot can find it.
    pidfile = tmp_path / "tool.pid"
    s = spec(tmp_path, "orphan", CLAUDE_CODE_FAKE_PIDFILE=str(pidfile), CLAUDE_CODE_FAKE_SLEEP="1.2")
    session = ProcessSpawner().spawn(s)
    tool = int(wait_for_file(pidfile))
    out = session.wait(timeout=10)
    assert out is not None and out.ok
    assert not out.timed_out and not out.stopped
    assert gone(tool)
    assert out.killed_pids == [tool]


def test_nested_tool_left_running_is_killed_with_its_children(tmp_path: Path) -> None:
    # Like the real Bash tool: a detached shell with its own child, both outliving the CLI.
    pidfile = tmp_path / "tool.pid"
    s = spec(tmp_path, "orphan", CLAUDE_CODE_FAKE_PIDFILE=str(pidfile), CLAUDE_CODE_FAKE_SLEEP="1.2",
             CLAUDE_CODE_FAKE_TOOL='["sh", "-c", "sleep 300; true"]')
    session = ProcessSpawner().spawn(s)
    shell = psutil.Process(int(wait_for_file(pidfile)))
    (sleeper,) = wait_for(shell.children, timeout=3, what="the tool shell's child", interval=0.01)
    out = session.wait(timeout=10)
    assert out is not None and out.ok
    assert gone(shell.pid) and gone(sleeper.pid)
    assert set(out.killed_pids) == {shell.pid, sleeper.pid}


def test_stop_sends_sigterm_then_sigkill_after_grace(tmp_path: Path) -> None:
    siglog, ready = tmp_path / "signals", tmp_path / "ready"
    s = spec(tmp_path, "sleep", CLAUDE_CODE_FAKE_SLEEP="30", CLAUDE_CODE_FAKE_SIGLOG=str(siglog),
             CLAUDE_CODE_FAKE_READYFILE=str(ready))
    session = ProcessSpawner().spawn(s)
    wait_for_file(ready)
    asked = time.monotonic()
    session.stop(grace=0.3)
    assert time.monotonic() - asked < 0.25  # non-blocking
    session.stop(grace=5)  # idempotent: the first request stands
    out = session.wait(timeout=5)
    assert out is not None
    assert time.monotonic() - asked >= 0.3
    assert out.stopped and not out.timed_out
    assert (out.exit_code, out.signal) == (None, signal.SIGKILL)
    assert siglog.read_text() == "TERM\n"  # it was asked first


def test_stop_ends_a_child_that_honours_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    session = ProcessSpawner().spawn(spec(tmp_path, "sleep", CLAUDE_CODE_FAKE_SLEEP="30", CLAUDE_CODE_FAKE_READYFILE=str(ready)))
    wait_for_file(ready)
    assert session.wait(timeout=0.05) is None and session.poll() is None
    session.stop(grace=5)
    out = session.wait(timeout=3)
    assert out is not None and out.stopped
    assert (out.exit_code, out.signal) == (None, signal.SIGTERM)


def test_kill_is_immediate_and_idempotent_from_another_thread(tmp_path: Path) -> None:
    siglog, ready = tmp_path / "signals", tmp_path / "ready"
    session = ProcessSpawner().spawn(spec(tmp_path, "sleep", CLAUDE_CODE_FAKE_SLEEP="30", CLAUDE_CODE_FAKE_SIGLOG=str(siglog),
                                          CLAUDE_CODE_FAKE_READYFILE=str(ready)))
    wait_for_file(ready)
    session.stop(grace=30)  # a long grace in progress must not delay kill()
    time.sleep(0.1)
    threads = [threading.Thread(target=session.kill) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = session.wait(timeout=3)
    assert out is not None and out.stopped
    assert out.signal == signal.SIGKILL
    session.kill()
    session.stop()
    assert session.poll() == out


def test_child_runs_in_its_own_session(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    session = ProcessSpawner().spawn(spec(tmp_path, "sleep", CLAUDE_CODE_FAKE_SLEEP="30", CLAUDE_CODE_FAKE_READYFILE=str(ready)))
    try:
        wait_for_file(ready)
        assert os.getsid(session.pid) == session.pid != os.getsid(0)
    finally:
        session.kill()
        session.wait(timeout=3)


def test_live_pids_and_on_exit(tmp_path: Path) -> None:
    exited = threading.Event()
    spawner = ProcessSpawner(on_exit=exited.set)
    session = spawner.spawn(spec(tmp_path, "sleep", CLAUDE_CODE_FAKE_SLEEP="0.3"))
    assert spawner.live_pids() == {session.pid}
    assert exited.wait(timeout=5)
    out = session.poll()
    assert out is not None and out.ok  # the outcome is ready when on_exit runs
    assert spawner.live_pids() == set()


def test_appended_log_parses_only_this_runs_output(tmp_path: Path) -> None:
    spawner = ProcessSpawner()
    first = run(spec(tmp_path, "ok"), spawner)
    assert first.ok
    second = run(spec(tmp_path, "garbage"), spawner)
    assert second.result is None  # the earlier run's result in the same log does not count
    assert b"hi there" in (tmp_path / "out.log").read_bytes()


def test_missing_binary_raises_spawn_error(tmp_path: Path) -> None:
    s = spec(tmp_path, "ok", argv=[str(tmp_path / "no-such-claude"), "--print"])
    with pytest.raises(SpawnError, match="no such file"):
        ProcessSpawner().spawn(s)
    assert not s.stdout_log.exists() and not s.stderr_log.exists()


def test_non_executable_binary_raises_spawn_error(tmp_path: Path) -> None:
    binary = tmp_path / "claude"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    with pytest.raises(SpawnError, match="permission denied"):
        ProcessSpawner().spawn(spec(tmp_path, "ok", argv=[str(binary)]))


def test_oversized_argument_raises_spawn_error(tmp_path: Path) -> None:
    s = spec(tmp_path, "ok", argv=[str(FAKE), "--print", "x" * 200_000])
    with pytest.raises(SpawnError, match="argument list too long"):
        ProcessSpawner().spawn(s)


def test_missing_cwd_raises_spawn_error(tmp_path: Path) -> None:
    s = spec(tmp_path, "ok")
    s = SpawnSpec(**{**s.__dict__, "cwd": tmp_path / "gone"})
    with pytest.raises(SpawnError, match="working directory"):
        ProcessSpawner().spawn(s)


def test_a_run_over_its_memory_limit_fails_as_a_breach_of_it(tmp_path: Path) -> None:
    """`memory_mb`: the child takes the limit before exec; a run that outgrows it fails, and says which limit."""
    from dataclasses import replace

    from maestro_py.policy.failures import FailureClass, classify, failure_reason
    from maestro_py.session import limits

    hog = tmp_path / "hog"
    hog.write_text("#!/bin/sh\nhead -c 400000000 /dev/zero | tr '\\0' a > /dev/null\n"
                   "x=$(head -c 300000000 /dev/zero | tr '\\0' a)\necho survived\n")
    hog.chmod(0o755)
    capped = limits.of(64, None)
    assert capped is not None
    out = run(replace(spec(tmp_path, "ok", argv=[str(hog)]), limits=capped))
    assert not out.ok and out.breach == "resource limit reached: memory_mb = 64"
    assert "survived" not in out.tail
    assert classify(out) is FailureClass.PERMANENT and failure_reason(out).startswith(out.breach)
    free = run(spec(tmp_path, "ok", argv=[str(hog)]))  # the same child without the limit gets through
    assert free.breach is None and "survived" in free.tail
