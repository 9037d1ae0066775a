"""Inline handlers and guards: noop, module:function in the agent root, and real shell-free commands."""

from __future__ import annotations

import os
import shlex
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from maestro_py import inline as handlers
from maestro_py.handler_spec import Spec, parse
from maestro_py.inline import HandlerResult, Kind, call
from tests.fakes import gone, wait_for

TICK: dict[str, Any] = {"id": "t-1", "cadence": "inbox", "attempt": 1}
PY = shlex.quote(sys.executable)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "agent"
    path.mkdir()
    return path


@pytest.fixture
def env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HANDLER_TEST": "from-env"}


def run(
    spec: str, root: Path, env: dict[str, str], *, kind: Kind = "handler", timeout: float = 10.0
) -> HandlerResult:
    return call(spec, dict(TICK), root=root, env=env, timeout=timeout, kind=kind)


def write_module(root: Path, name: str, body: str) -> Path:
    path = root / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def py_command(code: str) -> str:
    return f"{PY} -c {shlex.quote(textwrap.dedent(code))}"


# -- parsing -----------------------------------------------------------------------


def test_parse_forms() -> None:
    assert parse("noop") == Spec("noop")
    assert parse(" helpers.mail:run ") == Spec("function", module="helpers.mail", function="run")
    assert parse("./bin/check --flag 'a b'") == Spec("command", argv=("./bin/check", "--flag", "a b"))
    assert parse("python3 -m x:y").form == "command"


@pytest.mark.parametrize("bad", ["", "   ", "echo 'unclosed"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse(bad)


def test_invalid_spec_is_an_error_not_an_exception(root: Path, env: dict[str, str]) -> None:
    result = run("echo 'unclosed", root, env)
    assert not result.ok and result.error is not None and "invalid handler" in result.error


# -- noop --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["handler", "guard"])
def test_noop(root: Path, env: dict[str, str], kind: Kind) -> None:
    assert run("noop", root, env, kind=kind) == HandlerResult(True, "noop", None)


# -- module:function ---------------------------------------------------------------------


def test_function_gets_the_tick_and_succeeds(root: Path, env: dict[str, str]) -> None:
    write_module(
        root,
        "h_tick",
        """
        def run(tick):
            return {"seen": tick["id"]}
        """,
    )
    assert run("h_tick:run", root, env) == HandlerResult(True, "{'seen': 't-1'}", None)


def test_handler_returning_none_is_success(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_none", "def run(tick):\n    return None\n")
    assert run("h_none:run", root, env) == HandlerResult(True, "None", None)


def test_handler_returning_false_is_failure(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_false", "def run(tick):\n    return False\n")
    result = run("h_false:run", root, env)
    assert (result.ok, result.error) == (False, "handler returned False")


def test_handler_returning_falsy_non_false_is_success(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_zero", "def run(tick):\n    return 0\n")
    assert run("h_zero:run", root, env).ok


def test_handler_cannot_mutate_callers_tick(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_mut", "def run(tick):\n    tick['id'] = 'changed'\n")
    tick = dict(TICK)
    call("h_mut:run", tick, root=root, env=env, timeout=5)
    assert tick["id"] == "t-1"


@pytest.mark.parametrize(
    ("index", "value", "escalate"),
    [(0, True, True), (1, ["work"], True), (2, False, False), (3, None, False), (4, [], False)],
)
def test_guard_function_truthiness(
    root: Path, env: dict[str, str], index: int, value: object, escalate: bool
) -> None:
    write_module(root, f"g_truth{index}", f"def check(tick):\n    return {value!r}\n")
    result = run(f"g_truth{index}:check", root, env, kind="guard")
    assert result == HandlerResult(escalate, repr(value), None)


def test_handler_exception(root: Path, env: dict[str, str]) -> None:
    write_module(
        root,
        "h_boom",
        """
        def run(tick):
            raise RuntimeError("mailbox unreachable")
        """,
    )
    result = run("h_boom:run", root, env)
    assert not result.ok
    assert result.error == "RuntimeError: mailbox unreachable"
    assert "h_boom.py" in result.detail


def test_guard_exception_is_an_error_not_false(root: Path, env: dict[str, str]) -> None:
    write_module(root, "g_boom", "def check(tick):\n    raise KeyError('state')\n")
    result = run("g_boom:check", root, env, kind="guard")
    assert not result.ok and result.error == "KeyError: 'state'"


def test_system_exit_in_handler_is_contained(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_exit", "import sys\ndef run(tick):\n    sys.exit(3)\n")
    result = run("h_exit:run", root, env)
    assert not result.ok and result.error == "SystemExit: 3"


def test_missing_module(root: Path, env: dict[str, str]) -> None:
    result = run("no_such_helper_mod:run", root, env)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("cannot load no_such_helper_mod:run: ModuleNotFoundError")


def test_missing_function(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_nofn", "x = 1\n")
    result = run("h_nofn:run", root, env)
    assert not result.ok and result.error is not None and "has no attribute 'run'" in result.error
    noncallable = run("h_nofn:x", root, env)
    assert noncallable.error is not None and "is not callable" in noncallable.error


def test_import_error_in_module(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_broken", "import definitely_not_installed_xyz\n")
    result = run("h_broken:run", root, env)
    assert result.error is not None and "definitely_not_installed_xyz" in result.error


def test_root_is_on_sys_path_only_for_the_import(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_path", "def run(tick):\n    return True\n")
    before = list(sys.path)
    assert run("h_path:run", root, env).ok
    assert sys.path == before
    assert str(root.resolve()) not in sys.path


def test_package_module_beside_prompts(root: Path, env: dict[str, str]) -> None:
    (root / "cadences").mkdir()
    (root / "cadences" / "inbox_helpers.py").write_text("def run(tick):\n    return 'pkg'\n")
    assert run("cadences.inbox_helpers:run", root, env) == HandlerResult(True, "'pkg'", None)


def test_no_bytecode_written_into_agent_root(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_pyc", "def run(tick):\n    return 1\n")
    assert run("h_pyc:run", root, env).ok
    assert not (root / "__pycache__").exists()


def test_edited_module_is_reimported(root: Path, env: dict[str, str]) -> None:
    path = write_module(root, "h_edit", "def run(tick):\n    return 'one'\n")
    assert run("h_edit:run", root, env).detail == "'one'"
    path.write_text("def run(tick):\n    return 'two, edited'\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert run("h_edit:run", root, env).detail == "'two, edited'"


def test_same_module_name_in_another_root(tmp_path: Path, env: dict[str, str]) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for where, answer in ((first, "a"), (second, "b")):
        where.mkdir()
        (where / "h_shared.py").write_text(f"def run(tick):\n    return {answer!r}\n")
    assert call("h_shared:run", TICK, root=first, env=env, timeout=5).detail == "'a'"
    assert call("h_shared:run", TICK, root=second, env=env, timeout=5).detail == "'b'"


def test_function_timeout(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_slow", "import time\ndef run(tick):\n    time.sleep(5)\n")
    started = time.monotonic()
    result = run("h_slow:run", root, env, timeout=0.3)
    assert time.monotonic() - started < 3
    assert not result.ok and result.error is not None and result.error.startswith("timed out after 0.3s")


def test_calls_share_one_worker_thread_until_a_call_overruns(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_thread", "import threading\ndef run(tick):\n    return threading.get_ident()\n")
    write_module(root, "h_stuck", "import time\ndef run(tick):\n    time.sleep(3)\n")
    first, second = run("h_thread:run", root, env).detail, run("h_thread:run", root, env).detail
    assert first == second  # no thread started per call
    assert run("h_stuck:run", root, env, timeout=0.2).error.startswith("timed out")
    started = time.monotonic()
    after = run("h_thread:run", root, env)
    assert after.ok and after.detail != first  # a fresh worker: the stuck one still holds the old thread
    assert time.monotonic() - started < 2  # and the next call did not queue behind the stuck one


def test_long_return_value_is_truncated(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_long", "def run(tick):\n    return 'x' * 5000\n")
    result = run("h_long:run", root, env)
    assert result.ok and len(result.detail) == handlers.DETAIL_CHARS and result.detail.endswith("…")


# -- commands -----------------------------------------------------------------------


def test_command_reads_tick_env_and_cwd(root: Path, env: dict[str, str]) -> None:
    code = """
        import json, os, sys
        tick = json.load(sys.stdin)
        print(tick["id"], os.environ["HANDLER_TEST"], os.getcwd())
    """
    result = run(py_command(code), root, env)
    assert result == HandlerResult(True, f"t-1 from-env {root}", None)


def test_command_gets_only_the_given_env(
    root: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAKY_PARENT_VAR", "x")
    result = run(py_command("import os; print(os.environ.get('LEAKY_PARENT_VAR'))"), root, env)
    assert result.detail == "None"


def test_command_is_not_run_through_a_shell(root: Path, env: dict[str, str]) -> None:
    result = run(py_command("import sys; print(sys.argv[1:])") + " '$HOME' ';' 'echo' '>x'", root, env)
    assert result.ok and result.detail == "['$HOME', ';', 'echo', '>x']"
    assert not (root / "x").exists()


def test_relative_executable_runs_from_root(root: Path, env: dict[str, str]) -> None:
    script = root / "bin" / "check"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nprint('script ran')\n")
    script.chmod(0o755)
    assert run("./bin/check", root, env) == HandlerResult(True, "script ran", None)


def test_handler_exit_1_is_failure(root: Path, env: dict[str, str]) -> None:
    result = run(py_command("import sys; print('nope'); sys.exit(1)"), root, env)
    assert result == HandlerResult(False, "nope", "exited with status 1")


def test_guard_exit_0_escalates(root: Path, env: dict[str, str]) -> None:
    result = run(py_command("print('3 new mails')"), root, env, kind="guard")
    assert result == HandlerResult(True, "3 new mails", None)


def test_guard_exit_1_means_nothing_to_do(root: Path, env: dict[str, str]) -> None:
    result = run(py_command("import sys; print('inbox empty'); sys.exit(1)"), root, env, kind="guard")
    assert result == HandlerResult(False, "inbox empty", None)


@pytest.mark.parametrize("kind", ["handler", "guard"])
def test_other_exit_codes_are_errors(root: Path, env: dict[str, str], kind: Kind) -> None:
    result = run(py_command("import sys; sys.stderr.write('bad config'); sys.exit(2)"), root, env, kind=kind)
    assert result == HandlerResult(False, "bad config", "exited with status 2")


def test_killed_by_signal(root: Path, env: dict[str, str]) -> None:
    suicide = py_command("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    result = run(suicide, root, env, kind="guard")
    assert not result.ok and result.error == "killed by signal SIGTERM"


def test_missing_executable(root: Path, env: dict[str, str]) -> None:
    result = run("definitely-not-a-real-command-xyz --flag", root, env)
    assert result == HandlerResult(False, "", "command not found: definitely-not-a-real-command-xyz")


def test_non_executable_file(root: Path, env: dict[str, str]) -> None:
    (root / "plain.txt").write_text("not a program")
    result = run("./plain.txt", root, env)
    assert not result.ok and result.error == "command not executable: ./plain.txt"


def test_command_timeout_kills_the_process_group(root: Path, env: dict[str, str]) -> None:
    marker = root / "survived"
    # The child spawns a grandchild that would write a marker later; the whole group must die.
    late_write = f"import time; time.sleep(1.5); open({str(marker)!r}, 'w').close()"
    code = f"""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", {late_write!r}])
        print("started", grandchild.pid, flush=True)
        time.sleep(30)
    """
    started = time.monotonic()
    result = run(py_command(code), root, env, timeout=0.5)
    assert time.monotonic() - started < 5
    assert not result.ok and result.error == "timed out after 0.5s"
    word, pid = result.detail.split()
    assert word == "started"
    wait_for(lambda: gone(int(pid)), timeout=5, what="the grandchild gone")
    assert not marker.exists()


def test_command_ignoring_stdin_with_large_tick(root: Path, env: dict[str, str]) -> None:
    tick = dict(TICK, payload="x" * 1_000_000)
    result = call(py_command("print('ignored stdin')"), tick, root=root, env=env, timeout=10)
    assert result == HandlerResult(True, "ignored stdin", None)


def test_output_detail_is_the_last_kilobyte(root: Path, env: dict[str, str]) -> None:
    result = run(py_command("print('a' * 5000 + 'END')"), root, env)
    assert result.ok
    assert len(result.detail) == handlers.DETAIL_CHARS and result.detail.endswith("END")


def test_missing_root(tmp_path: Path, env: dict[str, str]) -> None:
    result = call(py_command("print(1)"), TICK, root=tmp_path / "gone", env=env, timeout=5)
    assert not result.ok and result.error is not None and "not a directory" in result.error


def test_import_that_hangs_is_bounded_by_the_timeout(root: Path, env: dict[str, str]) -> None:
    write_module(root, "h_hang_import", "import time\ntime.sleep(1.5)\ndef run(tick):\n    return 1\n")
    started = time.monotonic()
    result = run("h_hang_import:run", root, env, timeout=0.3)
    assert time.monotonic() - started < 3
    assert result.error is not None and result.error.startswith("timed out after 0.3s")
