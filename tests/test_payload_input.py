"""`--payload -` (standard input) and `--payload @FILE` on every command that takes a payload: enqueue, run-now,
dry-run; a bounded read, and one line with exit 2 for a missing file, bad JSON, a non-object or too much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py.bus.tick import MAX_BASE_BYTES
from maestro_py.cli import cli
from maestro_py.paths import Folder, Layout
from tests.fakes import REPO, daemon_env, invoke, one_line_error, read_json, tick_ids, write_agent

REGISTRY = """
[memo]

[beat]
mode = "inline"
handler = "noop"
"""


@pytest.fixture
def agent(tmp_path: Path) -> Layout:
    return write_agent(tmp_path / "agent", REGISTRY, prompts={"memo": "Write the memo."})


def payloads(layout: Layout, folder: Folder = Folder.INBOX) -> list[dict]:
    return [read_json(layout.folder(folder) / f"{tick_id}.json")["payload"] for tick_id in tick_ids(layout, folder)]


def test_enqueue_reads_the_payload_from_a_pipe(agent: Layout, tmp_path: Path) -> None:
    # Steps: `echo '{"to": "board"}' | maestro enqueue memo --payload -`, in a shell of its own.
    out = subprocess.run(f"echo '{{\"to\": \"board\"}}' | {sys.executable} -m maestro_py --root {agent.root} "
                         f"enqueue memo --payload -", shell=True, capture_output=True, text=True,
                         env=daemon_env(tmp_path), cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert payloads(agent) == [{"to": "board"}]


def test_enqueue_reads_the_payload_from_a_file(agent: Layout, runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"issue": 17, "labels": ["ux"]}))
    result = invoke(runner, agent.root, "enqueue", "memo", "--payload", f"@{tmp_path / 'p.json'}")
    assert result.exit_code == 0, result.stderr
    assert payloads(agent) == [{"issue": 17, "labels": ["ux"]}]


def test_dry_run_and_run_now_take_them_too(agent: Layout, runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"from": "file"}')
    dry = invoke(runner, agent.root, "dry-run", "memo", "--payload", f"@{tmp_path / 'p.json'}", "--json")
    assert dry.exit_code in (0, 1), dry.stderr
    assert '"from": "file"' in json.loads(dry.stdout)["stdin"]
    dry = runner.invoke(cli, ["--root", str(agent.root), "dry-run", "memo", "--payload", "-", "--json"],
                        input='{"from": "stdin"}')
    assert '"from": "stdin"' in json.loads(dry.stdout)["stdin"]
    # run-now on an inline cadence: `maestro run --once` runs it, the payload read from standard input
    out = subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(agent.root), "run-now", "beat",
                          "--payload", "-", "--wait", "--timeout", "60"], input='{"via": "run-now"}',
                         capture_output=True, text=True, env=daemon_env(tmp_path), cwd=REPO, timeout=90)
    assert out.returncode == 0, out.stderr
    assert payloads(agent, Folder.DONE) == [{"via": "run-now"}]


@pytest.mark.parametrize("command", [["enqueue", "memo"], ["run-now", "memo"], ["dry-run", "memo"]])
@pytest.mark.parametrize(("payload", "stdin", "error"), [
    ("@{missing}", None, "--payload @{missing}: cannot read it: No such file or directory"),
    ("@", None, "--payload @ names no file"),
    ("-", "{not json", "--payload - (standard input) is not valid JSON: "),
    ("@{bad}", None, "--payload @{bad} is not valid JSON: "),
    ("-", "[1, 2]", "--payload - (standard input) must be a JSON object, not an array"),
    ("@{scalar}", None, "--payload @{scalar} must be a JSON object, not a string"),
    ("-", "", "--payload - (standard input) is not valid JSON: "),
    ("-", "{\"x\": \"" + "a" * MAX_BASE_BYTES + "\"}", f"is larger than {MAX_BASE_BYTES} bytes"),
])
def test_bad_payload_input_is_one_line_and_exit_2(agent: Layout, runner: CliRunner, tmp_path: Path,
                                                  command: list[str], payload: str, stdin: str | None,
                                                  error: str) -> None:
    files = {"missing": tmp_path / "nope.json", "bad": tmp_path / "bad.json", "scalar": tmp_path / "s.json"}
    files["bad"].write_text("{'single': 'quotes'}")
    files["scalar"].write_text('"just a string"')
    named = {k: str(v) for k, v in files.items()}
    result = runner.invoke(cli, ["--root", str(agent.root), *command, "--payload", payload.format(**named)],
                           input=stdin)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert error.format(**named) in one_line_error(result)
    assert tick_ids(agent, Folder.INBOX) == []
