"""`maestro --help` lists every command with a one-line summary, and `-h` / `--help` work on every command and
subcommand, with no agent root needed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from maestro_py.cli import COMMANDS, SUMMARIES, cli


def every_command() -> Iterator[tuple[str, ...]]:
    """The path of every command and subcommand, `("dlq", "purge")` say."""
    def walk(group: click.Group, path: tuple[str, ...], ctx: click.Context) -> Iterator[tuple[str, ...]]:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            yield (*path, name)
            if isinstance(command, click.Group):
                yield from walk(command, (*path, name), click.Context(command, info_name=name, parent=ctx))
    yield from walk(cli, (), click.Context(cli, info_name="maestro"))


def commands_section(text: str) -> list[str]:
    return text.split("\nCommands:\n", 1)[1].rstrip("\n").splitlines()


def test_maestro_help_lists_every_command_with_a_one_line_summary(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"], prog_name="maestro", terminal_width=80)
    assert result.exit_code == 0
    rows = commands_section(result.stdout)
    listed = {}
    for row in rows:
        match = re.match(r"^  (\S+)\s{2,}(\S.*)$", row)
        assert match, f"not one line per command (a wrapped or empty summary?): {row!r}"
        listed[match[1]] = match[2]
    assert set(listed) == {*COMMANDS, "help"} == {*SUMMARIES, "help"}
    for name, summary in listed.items():
        assert len(f"  {name}  {summary}") <= 80 and not summary.endswith(("...", ".")), (name, summary)


def test_every_subcommand_group_lists_its_commands_with_a_summary(runner: CliRunner) -> None:
    for path in every_command():
        command = cli
        for name in path:
            command = command.get_command(click.Context(command), name)  # type: ignore[union-attr, assignment]
        if not isinstance(command, click.Group):
            continue
        text = runner.invoke(cli, [*path, "-h"], prog_name="maestro", terminal_width=80).stdout
        for row in commands_section(text):
            assert re.match(r"^  \S+\s{2,}\S", row), (path, row)


@pytest.mark.parametrize("path", list(every_command()), ids=" ".join)
def test_h_and_help_work_on_every_command_without_an_agent_root(path: tuple[str, ...], runner: CliRunner,
                                                                tmp_path: Path) -> None:
    for flag in ("-h", "--help"):
        result = runner.invoke(cli, ["--root", str(tmp_path / "nothing-here"), *path, flag], prog_name="maestro")
        assert result.exit_code == 0, (path, flag, result.stderr)
        assert result.stdout.startswith(f"Usage: maestro {' '.join(path)}"), result.stdout
        assert "-h, --help" in result.stdout
