"""The package's shape: what the CLI imports, no import cycle, no oversized module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from maestro_py.cli import COMMANDS, cli
from maestro_py.paths import Folder, Layout

REPO = Path(__file__).resolve().parent.parent

# Runs `maestro ARGS` through the console-script entry point and writes, at exit, every maestro_py module
# the process imported (atexit runs after main()'s sys.exit).
IMPORTS_OF = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(m for m in sys.modules if m.startswith("maestro_py")))))
sys.argv[0] = "maestro"
from maestro_py.cli import main
main()
"""


def imports_of(tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAESTRO_")}
    proc = subprocess.run([sys.executable, "-c", IMPORTS_OF, str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_enqueue_imports_neither_daemon_nor_ops_nor_session(tmp_path: Path) -> None:
    root = tmp_path / "agent"
    assert CliRunner().invoke(cli, ["--root", str(root), "init"]).exit_code == 0
    modules = imports_of(tmp_path, "--root", str(root), "enqueue", "hello", "--source", "cron")
    assert len(list(Layout(root).folder(Folder.INBOX).glob("*.json"))) == 1  # it did enqueue
    heavy = [m for m in modules if m.startswith(("maestro_py.daemon", "maestro_py.ops", "maestro_py.session"))]
    other_commands = [m for m in modules if m.startswith("maestro_py.cli.") and m not in ("maestro_py.cli.common",
                                                                                          "maestro_py.cli.bus")]
    assert heavy == [] and other_commands == []


def test_help_lists_every_lazy_command_with_its_short_help() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == sorted(COMMANDS)
    assert all(len(line.split()) > 1 for line in listed)  # each with the first line of its docstring
    for name in COMMANDS:
        assert cli.get_command(None, name).name == name  # type: ignore[arg-type,union-attr]
