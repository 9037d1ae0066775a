"""The `maestro` CLI through click's CliRunner: one-line errors, exit codes, idempotent init."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.cli import cli
from maestro_py.paths import Folder, Layout
from tests.fakes import REPO, invoke, one_line_error, read_json


@pytest.fixture
def root(tmp_path: Path, runner: CliRunner) -> Path:
    path = tmp_path / "agent"
    result = runner.invoke(cli, ["--root", str(path), "init"])
    assert result.exit_code == 0, result.output
    return path


def test_init_creates_the_layout_and_is_idempotent(runner: CliRunner, root: Path) -> None:
    lay = Layout(root)
    for folder in Folder:
        assert lay.folder(folder).is_dir()
    assert lay.env_file.is_file() and oct(lay.env_file.stat().st_mode & 0o777) == "0o600"
    assert lay.prompt_file("hello").is_file()
    lay.env_file.write_text("ANTHROPIC_API_KEY=mine\n")
    again = invoke(runner, root, "init")
    assert again.exit_code == 0 and "already set up" in again.output
    assert lay.env_file.read_text() == "ANTHROPIC_API_KEY=mine\n"


def test_packaged_env_template_matches_the_top_level_example() -> None:
    assert (REPO / ".env.example").read_text() == (REPO / "maestro_py/templates/env.example").read_text()


def test_enqueue_prints_the_tick_id(runner: CliRunner, root: Path) -> None:
    result = invoke(runner, root, "enqueue", "hello", "--source", "cron", "--payload", '{"a": 1}')
    assert result.exit_code == 0
    tick_id = result.stdout.strip()
    data = read_json(Layout(root).folder(Folder.INBOX) / f"{tick_id}.json")
    assert data["source"] == "cron" and data["payload"] == {"a": 1}


@pytest.mark.parametrize("args, fragment", [
    (["enqueue", "Bad/Name"], "invalid cadence name"),
    (["enqueue", "hello", "--payload", "{nope"], "--payload is not valid JSON"),
    (["enqueue", "hello", "--payload", "[1]"], "must be a JSON object"),
    (["enqueue", "hello", "--delay", "-1"], "--delay must be between 0 and"),
    (["enqueue", "hello", "--delay", "soon"], "'soon' is not a valid float"),
    (["enqueue", "nobody"], "unknown cadence 'nobody'"),
    (["enqueue"], "Missing argument"),
    (["frobnicate"], "No such command"),
])
def test_bad_arguments_get_one_line_and_exit_2(runner: CliRunner, root: Path, args: list[str], fragment: str) -> None:
    result = invoke(runner, root, *args)
    assert result.exit_code == 2
    assert fragment in one_line_error(result)
    assert list(Layout(root).folder(Folder.INBOX).iterdir()) == []


def test_force_enqueues_an_unknown_cadence(runner: CliRunner, root: Path) -> None:
    assert invoke(runner, root, "enqueue", "nobody", "--force").exit_code == 0


def test_enqueue_at_capacity_exits_75_and_leaves_nothing(runner: CliRunner, root: Path) -> None:
    env = {"MAESTRO_MAX_INBOX": "2"}
    for _ in range(2):
        assert invoke(runner, root, "enqueue", "hello", env=env).exit_code == 0
    lay = Layout(root)
    before = sorted(p.name for p in lay.folder(Folder.INBOX).iterdir())
    result = invoke(runner, root, "enqueue", "hello", env=env)
    assert result.exit_code == 75
    assert "inbox is full" in one_line_error(result)
    assert sorted(p.name for p in lay.folder(Folder.INBOX).iterdir()) == before
    assert list(lay.folder(Folder.TMP).iterdir()) == []


def test_bad_setting_names_the_variable(runner: CliRunner, root: Path) -> None:
    result = invoke(runner, root, "enqueue", "hello", env={"MAESTRO_MAX_INBOX": "lots"})
    assert result.exit_code == 78  # EX_CONFIG: a configuration error, not a usage error
    assert "MAESTRO_MAX_INBOX='lots'" in one_line_error(result)


def test_env_file_is_loaded_and_real_environment_wins(runner: CliRunner, root: Path) -> None:
    (root / ".env").write_text("MAESTRO_MAX_INBOX=1\n")
    assert invoke(runner, root, "enqueue", "hello").exit_code == 0
    assert invoke(runner, root, "enqueue", "hello").exit_code == 75
    assert invoke(runner, root, "enqueue", "hello", env={"MAESTRO_MAX_INBOX": "5"}).exit_code == 0


def test_invalid_registry_names_file_key_and_problem(runner: CliRunner, root: Path) -> None:
    (root / "cadences.toml").write_text("[hello]\ntimeout_seconds = 'abc'\n")
    result = invoke(runner, root, "dry-run", "hello")
    assert result.exit_code == 78
    line = one_line_error(result)
    assert "cadences.toml" in line and "timeout_seconds" in line
    delivered = invoke(runner, root, "enqueue", "hello")  # the cron path says it, and delivers the tick
    assert delivered.exit_code == 0 and "timeout_seconds" in delivered.stderr and "delivered anyway" in delivered.stderr


def test_root_from_environment(runner: CliRunner, root: Path) -> None:
    result = runner.invoke(cli, ["enqueue", "hello"], env={"MAESTRO_AGENT_ROOT": str(root)})
    assert result.exit_code == 0
    assert len(list(Layout(root).folder(Folder.INBOX).iterdir())) == 1


def test_stop_and_resume_manage_the_stop_file(runner: CliRunner, root: Path) -> None:
    lay = Layout(root)
    assert invoke(runner, root, "stop", "--reason", "spend spike").exit_code == 0
    assert json.loads(lay.stop_file.read_text())["reason"] == "spend spike"
    status = json.loads(invoke(runner, root, "status", "--json").stdout)
    assert status["emergency_stop"] is True
    assert invoke(runner, root, "resume").exit_code == 0
    assert not lay.stop_file.exists()


def test_status_without_a_daemon(runner: CliRunner, root: Path) -> None:
    invoke(runner, root, "enqueue", "hello")
    out = json.loads(invoke(runner, root, "status", "--json").stdout)
    assert out["daemon"]["alive"] is False
    assert out["queues"]["inbox"] == 1
    text = invoke(runner, root, "status").stdout
    assert "daemon: not running" in text and "inbox=1" in text


def test_readme_documents_every_setting() -> None:
    from maestro_py.config import VARS

    readme = (REPO / "README.md").read_text()
    missing = [name for name in VARS if f"`{name}`" not in readme]
    assert missing == []


def test_readme_layout_lists_every_module() -> None:
    """The README's layout block names every module of every subpackage, on its own package's line."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("```\nmaestro_py/\n") + len("```\nmaestro_py/\n")
    listed: dict[str, set[str]] = {}
    current = "."
    for line in readme[start:readme.index("```", start)].splitlines():
        if not line.startswith("  "):
            break  # past the package (tests/, bench/ …)
        words = line.split()
        if not line.startswith("   "):  # a package line (`  bus/  a.py b.py`) or the top-level modules
            current = words[0].rstrip("/") if words[0].endswith("/") else "."
        listed.setdefault(current, set()).update(w for w in words if w.endswith(".py"))
    package = REPO / "maestro_py"
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            found.setdefault(path.parent.relative_to(package).as_posix(), set()).add(path.name)
    assert found == {name: files for name, files in listed.items() if files}


# -- text from a run reaches the terminal escaped -------------------------------------------------------

HOSTILE_TEXT = "\x1b]0;owned\x07API Error: 500\x1b[2J\nsecond line\r\x9b31m\u202eevil"


def _dead_letter_with_hostile_text(root: Path) -> str:
    """A dead-lettered tick whose reason is a run's raw output, and a quarantined file named and filled likewise."""
    from maestro_py.bus.store import Bus

    bus = Bus(Layout(root))
    tick = bus.enqueue("hello")
    bus.index.promote(bus.clock.now())
    claim = bus.claim(tick.filename)
    bus.dead_letter(claim, HOSTILE_TEXT)
    bad = Layout(root).folder(Folder.INBOX) / "bad\x1b[2J\nname.json"
    bad.write_text("\x1b]0;x\x07 not json")
    bus.quarantine(bad, "not valid JSON")
    return tick.id


def _no_terminal_controls(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\r\x9b\u202e"), repr(text)


def test_dlq_list_and_show_escape_what_came_from_a_run(runner: CliRunner, root: Path) -> None:
    tick_id = _dead_letter_with_hostile_text(root)
    listed = invoke(runner, root, "dlq", "list")
    assert listed.exit_code == 0, listed.output
    _no_terminal_controls(listed.stdout)
    lines = listed.stdout.splitlines()
    assert len(lines) == 2  # one line per dead letter: the reason's newline is shown as \n
    assert any(line.startswith(tick_id) and "\\x1b]0;owned\\x07API Error: 500" in line and "\\nsecond line" in line
               for line in lines)
    assert any(line.startswith("bad\\x1b[2J\\nname.json  quarantined") for line in lines)
    shown = invoke(runner, root, "dlq", "show", tick_id)
    assert shown.exit_code == 0 and "API Error: 500" in shown.stdout
    _no_terminal_controls(shown.stdout)
    quarantined = invoke(runner, root, "dlq", "show", "bad\x1b[2J\nname.json")
    assert quarantined.exit_code == 0 and "\\x1b]0;x\\x07 not json" in quarantined.stdout
    _no_terminal_controls(quarantined.stdout)
    reasons = {i["id"]: i["reason"] for i in json.loads(invoke(runner, root, "dlq", "list", "--json").stdout)}
    assert reasons[tick_id] == HOSTILE_TEXT  # --json keeps the text whole (JSON escapes it)


def test_logs_escape_controls_even_in_values_without_spaces(runner: CliRunner, root: Path) -> None:
    from maestro_py.bus.events import EventLog

    EventLog(Layout(root)).emit("failed", level="error", id="t1", cadence="hello", tail="\x1b]0;owned\x07",
                                reason="x\x9b2J y\u202e")
    out = invoke(runner, root, "logs")
    assert out.exit_code == 0, out.output
    _no_terminal_controls(out.stdout)
    assert "tail=\\x1b]0;owned\\x07" in out.stdout or 'tail="\\u001b]0;owned\\u0007"' in out.stdout


def test_a_quarantined_file_fixed_by_hand_is_replayed(runner: CliRunner, root: Path) -> None:
    from maestro_py.bus.store import Bus

    from tests.fakes import events, read_json

    lay = Layout(root)
    bus = Bus(lay)
    for _ in range(2):  # the second copy goes to dlq/ as hello-1.json.1: it goes back under its own name
        (lay.folder(Folder.INBOX) / "hello-1.json").write_text('{"cadence": "hel')
        bus.quarantine(lay.folder(Folder.INBOX) / "hello-1.json", "not valid JSON: Unterminated string")
    dlq = lay.folder(Folder.DLQ)
    still = invoke(runner, root, "dlq", "replay", "hello-1.json.1")
    assert still.exit_code == 1
    error = one_line_error(still)
    assert "still not a valid tick" in error and "not valid JSON: Unterminated string" in error
    assert (dlq / "hello-1.json.1.reason.json").exists() and not list(lay.folder(Folder.INBOX).iterdir())
    (dlq / "hello-1.json.1").write_text('{"cadence": "hello", "payload": {"fixed": true}}')  # the hand fix
    done = invoke(runner, root, "dlq", "replay", "hello-1.json.1")
    assert done.exit_code == 0, done.output
    assert done.stdout == "replayed hello-1.json.1\n"
    tick = read_json(lay.folder(Folder.INBOX) / "hello-1.json")
    assert tick["id"] == "hello-1" and tick["payload"] == {"fixed": True}
    audit = tick["history"][-1]
    assert audit["outcome"] == "replayed" and audit["reason"] == "replayed from quarantine by operator"
    assert audit["quarantine_reason"] == "not valid JSON: Unterminated string"
    assert sorted(p.name for p in dlq.iterdir()) == ["hello-1.json", "hello-1.json.reason.json"]
    assert [e["quarantined"] for e in events(lay) if e["stage"] == "replayed"] == [True]
    # The other copy, fixed too, cannot overwrite the tick now queued under that name.
    (dlq / "hello-1.json").write_text('{"cadence": "hello"}')
    clash = invoke(runner, root, "dlq", "replay", "hello-1")
    assert clash.exit_code == 1 and "File exists" in one_line_error(clash)
    assert (dlq / "hello-1.json.reason.json").exists()


def test_a_configuration_error_at_start_up_exits_78_and_the_unit_does_not_restart_on_it(tmp_path: Path) -> None:
    """A broken config used to exit 2, so Restart=on-failure restarted it every 10 s forever (issue 17, item 3)."""
    from tests.fakes import daemon_env, maestro, write_agent

    layout = write_agent(tmp_path / "agent", "[memo]\nmode = 'warp'\n", {"memo": "hi"})
    env = daemon_env(tmp_path)
    result = maestro(layout, "run", "--once", env=env)
    assert result.returncode == 78 and "cadences.toml" in result.stderr
    layout.registry_file.write_text("")
    (layout.root / ".env").write_bytes(b"MAESTRO_POLL_MS=\xff\n")
    assert maestro(layout, "run", "--once", env=env).returncode == 78  # a .env that is not UTF-8
    unit = maestro(layout, "service", "print", "--systemd", env={**env, "MAESTRO_POLL_MS": "1000"})
    assert "RestartPreventExitStatus=78" in unit.stdout or unit.returncode == 78


def test_status_still_works_with_a_broken_registry_and_flags_it(runner: CliRunner, root: Path) -> None:
    (root / "cadences.toml").write_text("[hello]\ntimeout_seconds = 'abc'\n")
    result = invoke(runner, root, "status")
    assert result.exit_code == 3 and "REGISTRY INVALID" in result.stdout and "timeout_seconds" in result.stdout
    doc = json.loads(invoke(runner, root, "status", "--json").stdout)
    assert "timeout_seconds" in doc["registry_error"]


def test_help_for_people(runner: CliRunner, root: Path) -> None:
    """`maestro`, `maestro help`, `-h` print the help on stdout with exit 0 (issue 17, item 10)."""
    for args in ([], ["help"], ["-h"], ["--help"]):
        result = runner.invoke(cli, args, prog_name="maestro")
        assert result.exit_code == 0 and "Usage: maestro" in result.stdout and "governor" in result.stdout, args
    sub = runner.invoke(cli, ["help", "dlq", "purge"], prog_name="maestro")
    assert sub.exit_code == 0 and "--yes" in sub.stdout
    assert runner.invoke(cli, ["dlq", "list", "-h"]).stdout.count("Print the dead letters as JSON") == 1
    bad = runner.invoke(cli, ["help", "nosuch"])
    assert bad.exit_code == 2 and "no such command: nosuch" in one_line_error(bad)


def test_a_root_that_is_not_an_agent_root_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    """A typo in --root used to read as an empty agent with exit 0 (issue 17, item 9)."""
    for root, says in ((tmp_path / "typo", "no such folder"), (tmp_path, "not an agent root")):
        result = runner.invoke(cli, ["--root", str(root), "status"])
        assert result.exit_code == 78 and says in one_line_error(result) and "init" in one_line_error(result)
    assert not (tmp_path / "typo").exists()
    assert runner.invoke(cli, ["--root", str(tmp_path / "new"), "init"]).exit_code == 0
    assert runner.invoke(cli, ["--root", str(tmp_path / "new"), "dlq", "list"]).exit_code == 0


def test_root_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    from tests.fakes import daemon_env, write_agent

    layout = write_agent(tmp_path / "agent", "", {"memo": "hi"})
    env = daemon_env(tmp_path)
    for args in (["enqueue", "memo", "--root", str(layout.root)], ["enqueue", f"--root={layout.root}", "memo"]):
        result = subprocess.run([sys.executable, "-m", "maestro_py", *args], env=env, capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert len(list(layout.folder(Folder.INBOX).glob("*.json"))) == 2


def test_init_scaffolds_a_registry_a_gitignore_and_says_what_next(runner: CliRunner, tmp_path: Path) -> None:
    """Issue 17, item 12: somewhere to put a schedule, the cost-safety settings, a .gitignore, next steps."""
    from maestro_py.registry import Registry

    result = runner.invoke(cli, ["--root", str(tmp_path / "a"), "init"])
    assert result.exit_code == 0 and "next:" in result.stdout and "doctor" in result.stdout
    lay = Layout(tmp_path / "a")
    assert Registry.load(lay).get("hello").schedule == "0 9 * * 1-5"
    assert (lay.root / ".gitignore").read_text().splitlines()[1:] == [".env", "state/", "logs/"]
    env = lay.env_file.read_text()
    assert all(f"# {name}=" in env for name in ("MAESTRO_DAILY_USD_BUDGET", "MAESTRO_CIRCUIT_THRESHOLD",
                                                 "MAESTRO_RETENTION_DAYS"))
    doctor = runner.invoke(cli, ["--root", str(lay.root), "doctor", "--offline", "--json"])
    checks = {c["name"]: c["level"] for c in json.loads(doctor.stdout)["checks"]}
    assert checks["registry"] == "ok" and checks["prompts"] == "ok"


def claude_nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, project_cli: bool) -> Path:
    """No CLAUDE_BIN and a PATH without claude; this clone's `.tools/claude` CLI is a script in tmp_path (or none).
    Returns where that CLI is."""
    from maestro_py.errors import ClaudeUnavailable
    from maestro_py.session import command

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.delenv("CLAUDE_BIN", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    try:
        pytest.skip(f"this machine has a claude where maestro always looks: {command.resolve_claude(os.environ)}")
    except ClaudeUnavailable:
        pass
    local = tmp_path / "clone" / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
    if project_cli:
        local.parent.mkdir(parents=True)
        local.write_text("#!/bin/sh\necho '2.1.197 (Claude Code)'\n")
        local.chmod(0o755)
    monkeypatch.setattr(command, "PROJECT_CLAUDE", local)
    return local


def test_init_records_the_cli_make_installed_when_no_claude_is_on_path(
        runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 23, item 8: the README's walk-through on a machine whose only claude is the one `make` installed."""
    from maestro_py.envfile import load_env
    from maestro_py.session.command import resolve_claude

    local = claude_nowhere(monkeypatch, tmp_path, project_cli=True)
    result = runner.invoke(cli, ["--root", str(tmp_path / "a"), "init"])
    assert result.exit_code == 0, result.output
    assert f"CLAUDE_BIN={local} (the CLI `make` installed) written to {tmp_path / 'a' / '.env'}" in result.stdout
    lay = Layout(tmp_path / "a")
    assert load_env(lay)["CLAUDE_BIN"] == str(local) and resolve_claude(load_env(lay)) == str(local)
    assert oct(lay.env_file.stat().st_mode & 0o777) == "0o600"
    doctor = runner.invoke(cli, ["--root", str(lay.root), "doctor", "--offline", "--json"])
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["claude"]["level"] == "ok" and str(local) in checks["claude"]["detail"]
    lay.env_file.write_text("ANTHROPIC_API_KEY=mine\n")  # a second init leaves an existing .env alone
    assert runner.invoke(cli, ["--root", str(lay.root), "init"]).exit_code == 0
    assert lay.env_file.read_text() == "ANTHROPIC_API_KEY=mine\n"


def test_init_records_nothing_when_claude_is_found_or_there_is_none_to_record(
        runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = claude_nowhere(monkeypatch, tmp_path, project_cli=False)
    result = runner.invoke(cli, ["--root", str(tmp_path / "a"), "init"])
    assert result.exit_code == 0 and "warning: claude not found: set CLAUDE_BIN" in result.stdout
    local.parent.mkdir(parents=True)
    local.write_text("#!/bin/sh\n")
    local.chmod(0o755)
    monkeypatch.setenv("CLAUDE_BIN", str(local))  # found (the environment wins over .env anyway)
    result = runner.invoke(cli, ["--root", str(tmp_path / "b"), "init"])
    assert result.exit_code == 0 and f"claude: {local}\n" in result.stdout
    for root in ("a", "b"):
        assert "\nCLAUDE_BIN=" not in (tmp_path / root / ".env").read_text()


def test_circuit_open_refuses_a_cadence_that_does_not_exist(runner: CliRunner, root: Path) -> None:
    result = invoke(runner, root, "circuit", "open", "helo")
    assert result.exit_code == 2 and "no cadence 'helo'; did you mean 'hello'?" in one_line_error(result)
    assert invoke(runner, root, "circuit", "open", "hello").exit_code == 0
    listed = invoke(runner, root, "circuit", "list").stdout
    assert "until until" not in listed and "open until reset" in listed


def test_small_operator_answers(runner: CliRunner, root: Path) -> None:
    """From the walk: an empty dlq replay says so; a circuit reset of no such cadence is a usage error; a budget
    spent past its limit is never shown as a negative amount left."""
    from maestro_py.cli.common import figure_lines

    replay = invoke(runner, root, "dlq", "replay", "--all")
    assert replay.exit_code == 0 and "nothing to replay" in replay.stdout
    nope = invoke(runner, root, "circuit", "reset", "nope")
    assert nope.exit_code == 2 and "no cadence and no circuit named 'nope'" in one_line_error(nope)
    assert invoke(runner, root, "circuit", "reset", "hello").exit_code == 0
    row = {"total": {"tokens": None, "usd": 1.0}, "spent": {"tokens": 5, "usd": 1.0106},
           "reserved": {"tokens": 0, "usd": 0.0}, "remaining": {"tokens": None, "usd": -0.0106}}
    assert "remaining $0.0000 (over by $0.0106)" in figure_lines(row)[1]


def test_init_suggests_a_cadence_the_root_has(runner: CliRunner, tmp_path: Path) -> None:
    root = tmp_path / "agent"
    (root / "cadences").mkdir(parents=True)
    (root / "cadences" / "digest.md").write_text("Write the digest.")
    (root / "cadences.toml").write_text("[digest]\nschedule = \"0 9 * * *\"\n")  # an agent of its own, as examples/agent
    result = invoke(runner, root, "init")
    assert result.exit_code == 0 and "enqueue digest" in result.stdout and "enqueue hello" not in result.stdout
