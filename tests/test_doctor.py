"""`maestro doctor`: green against the loopback API with the real CLI, red on a 401, never printing the key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
from collections import namedtuple
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner, Result

from maestro_py.ops import doctor
from maestro_py.policy.breaker import Breakers, CircuitFile
from maestro_py.cli import cli
from maestro_py.clock import SystemClock, iso
from maestro_py.ops.doctor import Check, Level, Probe
from maestro_py.bus.fsio import atomic_write_json
from maestro_py.daemon.lock import DaemonLock
from maestro_py.bus.owner import Owner
from maestro_py.paths import Folder, Layout
from tests.fakes import FakeClock

REPO = Path(__file__).resolve().parent.parent
CLAUDE = REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from fake_api import FAKE_KEY, FakeMessagesAPI  # noqa: E402

BAD_KEY = "bad-" + "k" * 40
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credential, endpoint or setting of the machine running the tests reaches the doctor."""
    for name in list(os.environ):
        if name.upper().startswith(("ANTHROPIC", "CLAUDE", "MAESTRO")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")


@pytest.fixture
def root(tmp_path: Path, clean_env: None) -> Path:
    path = tmp_path / "agent"
    result = CliRunner().invoke(cli, ["--root", str(path), "init"])
    assert result.exit_code == 0, result.output
    (path / "cadences.toml").write_text('[hello]\nmodel = "claude-haiku-4-5"\n')
    return path


@pytest.fixture
def api() -> Iterator[FakeMessagesAPI]:
    server = FakeMessagesAPI().start()
    try:
        yield server
    finally:
        server.stop()


def doctor_cli(root: Path, *args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, ["--root", str(root), "doctor", *args], env={"CLAUDE_BIN": str(CLAUDE), **env})


def line_of(result: Result, name: str) -> str:
    found = [line for line in result.stdout.splitlines() if line.split()[1:2] == [name]]
    assert len(found) == 1, result.stdout
    return found[0]


def probe(root: Path, env: dict[str, str] | None = None, **kw: Any) -> Probe:
    return Probe(Layout(root), {"HOME": os.environ["HOME"], **(env or {})}, **kw)


# -- against the loopback API and the real CLI ----------------------------------------------------

def test_green_against_the_loopback_api_with_the_real_cli(root: Path, api: FakeMessagesAPI) -> None:
    result = doctor_cli(root, env={"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": FAKE_KEY})
    assert result.exit_code == 0, result.output
    assert not [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert line_of(result, "credential").startswith("ok")
    assert "2.1." in line_of(result, "claude") and line_of(result, "claude").startswith("ok")
    assert line_of(result, "registry").startswith("ok") and "hello" in line_of(result, "registry")
    assert FAKE_KEY not in result.output
    [post] = api.posts()
    assert post.headers["x-api-key"] == FAKE_KEY
    assert post.headers["anthropic-version"] == "2023-06-01"
    assert post.headers["content-type"] == "application/json"
    assert post.json == {"model": "claude-haiku-4-5", "max_tokens": 1,
                         "messages": [{"role": "user", "content": "ping"}]}


def test_red_on_a_rejected_key_with_both_fixes_and_no_key(root: Path, api: FakeMessagesAPI) -> None:
    (root / ".env").write_text(f"ANTHROPIC_API_KEY={BAD_KEY}\nANTHROPIC_BASE_URL={api.url}\n")
    result = doctor_cli(root, env={})
    assert result.exit_code == 1, result.output
    line = line_of(result, "credential")
    assert line.startswith("fail") and "HTTP 401" in line
    assert "ANTHROPIC_API_KEY in" in line and ".env" in line and "MAESTRO_PREFER_SUBSCRIPTION_AUTH=1" in line
    assert BAD_KEY not in result.output and "doctor:" in result.stdout.splitlines()[-1]


def test_red_when_the_api_answers_401_and_json_output(root: Path, api: FakeMessagesAPI) -> None:
    api.mode = "401"
    result = doctor_cli(root, "--json", env={"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": FAKE_KEY})
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["credential"]["level"] == "fail" and "invalid x-api-key" in by_name["credential"]["detail"]
    assert FAKE_KEY not in result.output


def test_other_http_errors_warn_with_the_status(root: Path, api: FakeMessagesAPI) -> None:
    api.mode = "529"
    result = doctor_cli(root, env={"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": FAKE_KEY})
    assert result.exit_code == 0, result.output
    assert line_of(result, "credential").startswith("warn") and "HTTP 529" in line_of(result, "credential")


def test_offline_and_subscription_auth_do_not_call_the_api(root: Path, api: FakeMessagesAPI) -> None:
    env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": FAKE_KEY}
    offline = doctor_cli(root, "--offline", env=env)
    assert "skipped" in line_of(offline, "credential") and line_of(offline, "credential").startswith("warn")
    sub = doctor_cli(root, env={**env, "MAESTRO_PREFER_SUBSCRIPTION_AUTH": "1"})
    assert line_of(sub, "credential").startswith("warn") and "run `claude` once to log in" in sub.stdout
    assert api.post_count() == 0 and FAKE_KEY not in offline.output + sub.output


def test_no_network_is_a_warning(root: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    check = doctor.check_credential(probe(root, {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
                                                 "ANTHROPIC_API_KEY": FAKE_KEY}))
    assert check.level is Level.WARN and "cannot reach" in check.detail

    def timeout(*_: Any) -> tuple[int, bytes]:
        raise urllib.error.URLError(TimeoutError("timed out"))

    check = doctor.check_credential(probe(root, {"ANTHROPIC_API_KEY": FAKE_KEY}, http_post=timeout))
    assert check.level is Level.WARN and "api.anthropic.com" in check.detail


def test_injected_http_post_sees_the_default_endpoint(root: Path) -> None:
    seen: list[tuple[str, float]] = []

    def post(url: str, headers: Any, body: bytes, timeout: float) -> tuple[int, bytes]:
        seen.append((url, timeout))
        return 200, b"{}"

    check = doctor.check_credential(probe(root, {"ANTHROPIC_API_KEY": FAKE_KEY}, http_post=post))
    assert check.level is Level.OK
    assert seen == [("https://api.anthropic.com/v1/messages", 8.0)]


# -- configuration checks ---------------------------------------------------------------------------

def test_missing_env_warns_and_an_invalid_registry_fails(root: Path) -> None:
    (root / ".env").unlink()
    (root / "cadences.toml").write_text("[hello]\nmodle = 1\n")
    checks = {c.name: c for c in doctor.run_checks(probe(root, offline=True, run=_version_ok))}
    assert checks["env"].level is Level.WARN
    assert checks["registry"].level is Level.FAIL and "modle" in checks["registry"].detail
    assert "unknown key (did you mean mode?)" in checks["registry"].detail
    assert checks["prompts"].level is Level.WARN and "registry is invalid" in checks["prompts"].detail


def test_a_bad_setting_fails(root: Path) -> None:
    check = doctor.check_settings(probe(root, {"MAESTRO_RETENTION_DAYS": "soon"}))
    assert check.level is Level.FAIL and "MAESTRO_RETENTION_DAYS" in check.detail


def test_an_unreadable_prompt_fails(root: Path) -> None:
    (root / "cadences" / "hello.md").write_bytes(b"\xff\xfe not utf-8")
    check = doctor.check_prompts(probe(root))
    assert check.level is Level.FAIL and "hello" in check.detail


def test_claude_missing_or_broken_fails(root: Path) -> None:
    missing = doctor.check_claude(probe(root, {"CLAUDE_BIN": str(root / "nope")}))
    assert missing.level is Level.FAIL and "CLAUDE_BIN" in missing.detail

    def broken(argv: list[str], env: Any, cwd: Path, timeout: float) -> tuple[int, str, str]:
        return 3, "", "Error: boom\n"

    def hangs(argv: list[str], env: Any, cwd: Path, timeout: float) -> tuple[int, str, str]:
        raise subprocess.TimeoutExpired(argv, timeout)

    env = {"CLAUDE_BIN": str(CLAUDE)}
    assert "exited 3: Error: boom" in doctor.check_claude(probe(root, env, run=broken)).detail
    assert "within 10 s" in doctor.check_claude(probe(root, env, run=hangs)).detail


def test_claude_version_runs_with_the_child_environment(root: Path) -> None:
    seen: dict[str, Any] = {}

    def record(argv: list[str], env: Any, cwd: Path, timeout: float) -> tuple[int, str, str]:
        seen.update(argv=argv, env=dict(env), cwd=cwd, timeout=timeout)
        return 0, "9.9.9 (Claude Code)\n", ""

    check, version = doctor.check_claude(probe(root, {"CLAUDE_BIN": str(CLAUDE)}, run=record))
    assert check.level is Level.OK and "9.9.9" in check.detail
    assert version.level is Level.OK and "permissions need 2.1.337 or newer" in version.detail
    assert seen["argv"] == [str(CLAUDE), "--version"] and seen["timeout"] == 10.0
    assert seen["env"]["AGENT_DIR"] == str(root) and seen["env"]["CLAUDE_CODE_MAX_RETRIES"] == "2"


def test_a_cli_older_than_the_permissions_need_fails_with_the_fix(root: Path) -> None:
    def old(argv: list[str], env: Any, cwd: Path, timeout: float) -> tuple[int, str, str]:
        return 0, "2.1.197 (Claude Code)\n", ""

    _, version = doctor.check_claude(probe(root, {"CLAUDE_BIN": str(CLAUDE)}, run=old))
    assert version.level is Level.FAIL and "2.1.197 is older than 2.1.337" in version.detail
    assert "npm install -g @anthropic-ai/claude-code@2.1.337" in version.detail


def test_doctor_shows_the_sandbox_and_each_cadence_policy(root: Path, tmp_path: Path) -> None:
    from maestro_py.ops import permission_checks

    (root / "cadences.toml").write_text('[hello]\ntools = ["Read", "Bash"]\nallow = ["Bash(git status)"]\n')
    blind = probe(root, {"PATH": str(tmp_path)})  # no bwrap, no socat
    sandbox = permission_checks.check_sandbox(blind)
    assert sandbox.level is Level.FAIL and "hello" in sandbox.detail and "apt-get install bubblewrap socat" in \
        sandbox.detail
    (policy,) = permission_checks.check_permissions(blind)
    assert policy.name == "may[hello]" and policy.detail.startswith("dontAsk; tools Read,Bash; allow Bash(git status)")
    assert "untrusted input refused" in policy.detail
    (root / "cadences.toml").write_text('[hello]\ntools = ["Read", "Bash"]\nsandbox = "preferred"\n')
    assert permission_checks.check_sandbox(blind).level is Level.WARN


# -- the running system -----------------------------------------------------------------------------

def test_daemon_not_running_warns(root: Path) -> None:
    assert doctor.check_daemon(probe(root)).level is Level.WARN


def test_daemon_heartbeat_fresh_is_ok_and_stale_fails(root: Path) -> None:
    lay = Layout(root)
    clock = FakeClock(SystemClock().now())
    me = Owner.current()
    with DaemonLock(lay.lock_file, root):
        beat = clock.now() - timedelta(seconds=5)
        atomic_write_json(lay.consumer_file, {"pid": me.pid, "owner": me.token, "heartbeat": iso(beat)})
        ok = doctor.check_daemon(probe(root, clock=clock))
        assert ok.level is Level.OK and f"pid {os.getpid()}" in ok.detail
        clock.advance(30)  # 35 s: beyond 3 × 1 s + 30 s
        stale = doctor.check_daemon(probe(root, clock=clock))
        assert stale.level is Level.FAIL and "35.0 s old (limit 33.0 s)" in stale.detail and "stuck" in stale.detail
        # A slower poll stretches the limit: 3 × 5 s + 30 s = 45 s.
        assert doctor.check_daemon(probe(root, {"MAESTRO_POLL_MS": "5000"}, clock=clock)).level is Level.OK


def test_stale_claims_are_counted(root: Path) -> None:
    claimed = Layout(root).folder(Folder.CLAIMED)
    proc = subprocess.Popen(["sleep", "30"])
    dead = Owner.of(proc.pid)
    proc.kill()
    proc.wait()
    (claimed / f"t1@{dead.token}.json").write_text("{}")
    (claimed / f"t2@{Owner.current().token}.json").write_text("{}")
    check = doctor.check_claims(probe(root))
    assert check.level is Level.WARN and check.detail.startswith("1 of 2 claim(s)")
    (claimed / f"t1@{dead.token}.json").unlink()
    assert doctor.check_claims(probe(root)).level is Level.OK


def test_dlq_and_emergency_stop_warn(root: Path) -> None:
    lay = Layout(root)
    (lay.folder(Folder.DLQ) / "t1.json").write_text("{}")
    (lay.folder(Folder.DLQ) / "t2.json").write_text("{}")
    dlq = doctor.check_dlq(probe(root))
    assert dlq.level is Level.WARN and "2 dead letter(s)" in dlq.detail and "maestro dlq list" in dlq.detail
    atomic_write_json(lay.stop_file, {"reason": "spend spike"})
    stop = doctor.check_stop(probe(root))
    assert stop.level is Level.WARN and "spend spike" in stop.detail


def test_a_fifo_as_the_stop_file_does_not_hang_doctor(root: Path) -> None:
    """Doctor read the STOP file with a plain open: a FIFO there blocked it for ever."""
    import threading

    os.mkfifo(Layout(root).stop_file)
    box: list = []
    worker = threading.Thread(target=lambda: box.append(doctor.check_stop(probe(root))), daemon=True)
    worker.start()
    worker.join(5)
    assert box and box[0].level is Level.WARN and "not a regular file" in box[0].detail


def test_auth_halt_fails_and_open_circuits_warn(root: Path) -> None:
    lay = Layout(root)
    now = SystemClock().now()
    breakers = Breakers()
    breakers.open_manually("hello", now, 600)
    file = CircuitFile(lay.circuit_file, lay.folder(Folder.TMP))
    file.save(breakers.to_doc(now))
    halt, circuits = doctor.check_circuits(probe(root))
    assert halt.level is Level.OK and circuits.level is Level.WARN and "hello" in circuits.detail
    breakers.halt_auth(now, "authentication_error: invalid x-api-key", "abc")
    file.save(breakers.to_doc(now))
    halt, circuits = doctor.check_circuits(probe(root))
    assert halt.name == "auth-halt" and halt.level is Level.FAIL and "invalid x-api-key" in halt.detail
    lay.circuit_file.write_text("not json")
    assert doctor.check_circuits(probe(root))[0].level is Level.FAIL


def test_budget_left_from_the_ledger(root: Path) -> None:
    assert doctor.check_budget(probe(root)) == Check("budget", Level.OK, "no budget configured")
    clock = FakeClock(SystemClock().now())
    earlier = iso(clock.now())  # inside today's window whatever the hour
    Layout(root).ledger_file.write_text(json.dumps({"ts": earlier, "cadence": "hello", "ok": True,
                                                    "total_tokens": 1000, "cost_usd": 0.4}) + "\n")
    env = {"MAESTRO_DAILY_USD_BUDGET": "1", "MAESTRO_DAILY_TOKEN_BUDGET": "100000"}
    ok = doctor.check_budget(probe(root, env, clock=clock))
    assert ok.level is Level.OK and ok.detail == "global daily: 99,000 tokens / $0.6000 left"
    low = doctor.check_budget(probe(root, {**env, "MAESTRO_RESERVE_USD": "0.7"}, clock=clock))
    assert low.level is Level.WARN and low.detail.startswith("global daily cannot cover another run until ")
    # Spend in the ledger but no limit anywhere: nothing to run short of.
    assert doctor.check_budget(probe(root, clock=clock)) == Check("budget", Level.OK, "no budget configured")


def test_a_budget_smaller_than_one_reservation_says_never_not_until_midnight(root: Path) -> None:
    check = doctor.check_budget(probe(root, {"MAESTRO_DAILY_TOKEN_BUDGET": "1000"}))
    assert check == Check("budget", Level.WARN, "global daily: hello will never run: one run reserves 20,000 tokens "
                          "(MAESTRO_RESERVE_TOKENS), more than the whole limit of 1,000 tokens; raise the limit or "
                          "lower the reservation")
    # The limit is below the default reservation, but hello's own reservation fits: nothing waits on midnight.
    (root / "cadences.toml").write_text('[hello]\nreserve_tokens = 800\n')
    fits = doctor.check_budget(probe(root, {"MAESTRO_DAILY_TOKEN_BUDGET": "1000"}))
    assert fits == Check("budget", Level.OK, "global daily: 1,000 tokens left")


def test_disk_thresholds(root: Path) -> None:
    def usage(free: int) -> Any:
        return lambda path: Usage(10**12, 0, free)

    assert doctor.check_disk(probe(root, disk_usage=usage(50 * doctor.MB))).level is Level.FAIL
    assert doctor.check_disk(probe(root, disk_usage=usage(500 * doctor.MB))).level is Level.WARN
    assert doctor.check_disk(probe(root, disk_usage=usage(5000 * doctor.MB))).level is Level.OK
    assert doctor.check_disk(probe(root)).detail.endswith(f"free on {root}")


def test_folders_missing_warn(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "logs")
    check = doctor.check_writable(probe(root))
    assert check.level is Level.WARN and str(root / "logs") in check.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_unwritable_folder_fails(root: Path) -> None:
    logs = root / "logs"
    logs.chmod(0o500)
    try:
        assert doctor.check_writable(probe(root)).level is Level.FAIL
    finally:
        logs.chmod(0o700)


def test_a_crashing_check_fails_and_details_are_redacted(root: Path) -> None:
    def crash(p: Probe) -> Check:
        raise RuntimeError("oops")

    def leaky(p: Probe) -> Check:
        return Check("leaky", Level.OK, f"key is {FAKE_KEY}\nsecond line")

    checks = doctor.run_checks(probe(root, {"ANTHROPIC_API_KEY": FAKE_KEY}), (crash, leaky))
    assert checks[0] == Check("crash", Level.FAIL, "check crashed: RuntimeError: oops")
    assert checks[1].detail == "key is [REDACTED] second line"
    assert doctor.failed(checks) and not doctor.failed(checks[1:])


def _version_ok(argv: list[str], env: Any, cwd: Path, timeout: float) -> tuple[int, str, str]:
    return 0, "1.0.0 (Claude Code)\n", ""


def test_a_misspelt_setting_is_named_with_the_one_meant(tmp_path: Path) -> None:
    """`MAESTRO_DAILY_BUDGET_USD=5` used to pass silently and doctor said "no budget configured" (issue 17, 5)."""
    from maestro_py.config import unknown_settings
    from maestro_py.ops.doctor import check_settings

    env = {"MAESTRO_DAILY_BUDGET_USD": "5", "MAESTRO_SUBSESSION": "x", "MAESTRO_ZZZ": "1"}
    assert unknown_settings(env) == ["MAESTRO_DAILY_BUDGET_USD is not a setting; did you mean MAESTRO_DAILY_USD_BUDGET?",
                                     "MAESTRO_ZZZ is not a setting"]
    layout = Layout(tmp_path)
    check = check_settings(Probe(layout=layout, env=env))
    assert check.level is Level.WARN and "did you mean MAESTRO_DAILY_USD_BUDGET?" in check.detail
