"""The package as pip builds and installs it: no warning box during `make venv`, the metadata an index shows, and
shell completion through the installed `maestro` entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.fakes import REPO

VENV_BIN = Path(sys.executable).parent


def test_the_editable_install_make_venv_does_prints_no_warning_box(tmp_path: Path) -> None:
    # What `make venv` runs, into a throwaway prefix (--ignore-installed: the suite's own install stays as it is).
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed",
                          "--prefix", str(tmp_path / "prefix"), "-e", str(REPO)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "!!" not in text and "Please be careful" not in text and "Warning" not in text, text
    metadata = next((tmp_path / "prefix").rglob("maestro_py-*.dist-info/METADATA")).read_text()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert "Classifier: Programming Language :: Python :: 3.13" in metadata


def test_pyproject_declares_license_classifiers_and_versions() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (REPO / "LICENSE").is_file()
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639: the expression alone
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in project["classifiers"]


def _complete(words: str, shell: str = "bash") -> list[str]:
    """What the installed `maestro` answers a shell's completion request for the command line `words`."""
    env = {**os.environ, "_MAESTRO_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    if shell != "bash":
        env["COMP_CWORD"] = words.split()[-1] if not words.endswith(" ") else ""
    out = subprocess.run([str(VENV_BIN / "maestro")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_shell_completion_scripts_come_from_the_installed_entry_point() -> None:
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef maestro"),
                          ("fish", "complete --no-files")):
        out = subprocess.run([str(VENV_BIN / "maestro")], env={**os.environ, "_MAESTRO_COMPLETE": f"{shell}_source"},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and marker in out.stdout, (shell, out.stdout, out.stderr)


def test_shell_completion_completes_subcommands_and_their_options() -> None:
    assert _complete("maestro ci") == ["plain,circuit"]
    every = {line.split(",", 1)[1] for line in _complete("maestro ")}
    assert {"enqueue", "run", "status", "logs", "run-now", "dry-run", "dlq", "service"} <= every
    assert {line.split(",", 1)[1] for line in _complete("maestro dlq ")} >= {"list", "show", "replay", "purge"}
    assert "--since" in {line.split(",", 1)[1] for line in _complete("maestro logs --s")}
    fish = _complete("maestro run-n", shell="fish")
    assert any(line.startswith("plain,run-now") for line in fish), fish
