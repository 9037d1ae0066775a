"""Tab completion of cadence names and tick ids (issue 26, item 5): through click's completion protocol in a real
`maestro` process (`_MAESTRO_COMPLETE=bash_complete`, `zsh_complete`), and through `click.shell_completion` in this
process for the many cases. Names come from the registry and folder listings only, and nothing ever fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.shell_completion import ShellComplete

from maestro_py.bus.store import Bus
from maestro_py.cli import cli
from maestro_py.cli.common import MAX_COMPLETIONS, complete_cadence
from maestro_py.paths import Folder, Layout
from tests.fakes import REPO, write_agent

TOML = '[memo]\nmode = "inline"\nhandler = "noop"\n[memo-weekly]\nmode = "inline"\nhandler = "noop"\n'


@pytest.fixture
def agent(tmp_path: Path) -> tuple[Layout, dict[str, str]]:
    """A root with three cadences (two tables, one prompt file) and a tick in each folder, plus a quarantined file:
    {folder: id}."""
    layout = write_agent(tmp_path / "agent", TOML, {"digest": "Write the digest."})
    bus = Bus(layout)
    ids = {name: bus.enqueue("memo", payload={"n": name}).id for name in ("queued", "running", "done", "dead")}
    inbox = layout.folder(Folder.INBOX)
    os.rename(inbox / f"{ids['running']}.json", layout.folder(Folder.CLAIMED) / f"{ids['running']}@4242-99.json")
    os.rename(inbox / f"{ids['done']}.json", layout.folder(Folder.DONE) / f"{ids['done']}.json")
    os.rename(inbox / f"{ids['dead']}.json", layout.folder(Folder.DLQ) / f"{ids['dead']}.json")
    (layout.folder(Folder.DLQ) / "torn.json").write_text("{")
    (layout.folder(Folder.DLQ) / "torn.json.reason.json").write_text('{"reason": "not JSON"}')
    return layout, ids


def complete(*words: str, incomplete: str = "") -> list[str]:
    """What click completes for `maestro WORDS INCOMPLETE` (the values only)."""
    return [item.value for item in ShellComplete(cli, {}, "maestro", "_MAESTRO_COMPLETE").get_completions(
        list(words), incomplete)]


def test_cadence_names_for_every_command_that_takes_one(agent: tuple[Layout, dict[str, str]]) -> None:
    root = str(agent[0].root)
    every = ["digest", "hello", "memo", "memo-weekly"] if (agent[0].cadences_dir / "hello.md").exists() else \
        ["digest", "memo", "memo-weekly"]
    for words in (["run-now"], ["dry-run"], ["enqueue"], ["circuit", "open"], ["circuit", "reset"],
                  ["logs", "--cadence"]):
        assert complete("--root", root, *words) == every, words
        assert complete("--root", root, *words, incomplete="memo") == ["memo", "memo-weekly"], words
    assert complete("--root", root, "run-now", incomplete="x") == []


def test_tick_ids_where_each_command_takes_them(agent: tuple[Layout, dict[str, str]]) -> None:
    layout, ids = agent
    root = str(layout.root)
    every = sorted([*ids.values(), "torn"])  # as `tick show` resolves ids: every folder, a claim's owner cut off
    assert complete("--root", root, "tick", "show") == every
    assert complete("--root", root, "logs", "--id") == every
    for verb in ("cancel", "retry-now"):  # they take queued ticks only
        assert complete("--root", root, "tick", verb) == [ids["queued"]]
    for words in (["dlq", "show"], ["dlq", "replay"], ["dlq", "replay", ids["dead"]]):
        assert complete("--root", root, *words) == sorted([ids["dead"], "torn.json"]), words
    assert complete("--root", root, "tick", "show", incomplete=ids["done"][:22]) == [ids["done"]]


def test_the_bash_protocol_in_a_real_process_with_root_after_the_command(agent: tuple[Layout, dict[str, str]],
                                                                         tmp_path: Path) -> None:
    layout, ids = agent

    def shell(line: str, kind: str = "bash") -> list[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "_MAESTRO_COMPLETE": f"{kind}_complete", "COMP_WORDS": line,
               "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1))}
        env.pop("MAESTRO_AGENT_ROOT", None)
        out = subprocess.run([sys.executable, "-m", "maestro_py"], env=env, capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        return out.stdout.splitlines()

    assert shell(f"maestro --root {layout.root} run-now me") == ["plain,memo", "plain,memo-weekly"]
    assert shell(f"maestro tick cancel --root {layout.root} ") == [f"plain,{ids['queued']}"]  # --root after it
    assert shell(f"maestro --root={layout.root} dry-run d") == ["plain,digest"]
    zsh = shell(f"maestro --root {layout.root} tick show {ids['running'][:24]}", "zsh")
    assert zsh == ["plain", ids["running"], "running"]  # zsh shows where the tick is beside it


@pytest.mark.parametrize("damage", ["no root", "registry not TOML", "registry not UTF-8", "registry a folder",
                                    "bus folders are files"])
def test_completion_never_fails(tmp_path: Path, damage: str) -> None:
    layout = write_agent(tmp_path / "agent", TOML, {"digest": "hi"})
    root = str(layout.root)
    if damage == "no root":
        root = str(tmp_path / "nowhere")
    elif damage == "registry not TOML":
        layout.registry_file.write_text(TOML + "[broken\n")
    elif damage == "registry not UTF-8":
        layout.registry_file.write_bytes(b"[caf\xe9]\n")
    elif damage == "registry a folder":
        layout.registry_file.unlink()
        layout.registry_file.mkdir()
    else:
        for folder in (Folder.INBOX, Folder.CLAIMED, Folder.DONE, Folder.DLQ):
            layout.folder(folder).rmdir()
            layout.folder(folder).write_text("not a folder")
    cadences = complete("--root", root, "run-now")
    ids = complete("--root", root, "tick", "show") + complete("--root", root, "dlq", "show")
    if damage == "no root":
        assert cadences == [] and ids == []
    elif damage == "registry not TOML":  # an invalid registry still names its prompt files
        assert cadences == ["digest"]
    elif damage in ("registry not UTF-8", "registry a folder"):
        assert cadences == ["digest"]
    else:
        assert cadences == ["digest", "memo", "memo-weekly"] and ids == []


def test_an_invalid_registry_still_names_its_tables(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", TOML + "bogus = 1\n[defaults]\n", {"digest": "hi"})  # an unknown key
    assert complete("--root", str(layout.root), "dry-run") == ["digest", "memo", "memo-weekly"]


def test_a_large_done_folder_completes_fast_and_bounded(tmp_path: Path) -> None:
    """Names only: 20,000 done ticks are listed, none read; the newest MAX_COMPLETIONS are offered."""
    layout = write_agent(tmp_path / "agent", TOML)
    done = layout.folder(Folder.DONE)
    names = [f"20260101T{i:06d}000000Z-0000001-{i:08x}" for i in range(20_000)]
    for name in names:
        (done / f"{name}.json").write_text("")  # empty: a reader would fail on it
    started = time.monotonic()
    got = complete("--root", str(layout.root), "tick", "show")
    elapsed = time.monotonic() - started
    assert got == names[-MAX_COMPLETIONS:] and elapsed < 2.0, elapsed
    print(f"\ntick show completion over 20,000 done ticks: {elapsed * 1000:.0f} ms")


def test_a_new_option_attaches_cadence_completion_in_one_word(agent: tuple[Layout, dict[str, str]]) -> None:
    """How `runs --cadence` takes it: `shell_complete=complete_cadence`."""
    @click.command()
    @click.option("--cadence", shell_complete=complete_cadence)
    def runs(cadence: str | None) -> None:
        pass

    group = click.Group("maestro", params=[click.Option(["--root"])], commands={"runs": runs})
    got = ShellComplete(group, {}, "maestro", "_MAESTRO_COMPLETE").get_completions(
        ["--root", str(agent[0].root), "runs", "--cadence"], "memo")
    assert [item.value for item in got] == ["memo", "memo-weekly"]


def test_runs_cadence_and_tick_kill_and_log_complete_too() -> None:
    """The commands written beside completion take it as well: `runs --cadence` the cadences, `tick kill` the running
    ticks only, `tick log` every tick."""
    import click

    from maestro_py.cli import runs as runs_cli, tick as tick_cli

    def callback(cmd: click.Command, name: str) -> object:
        return next(p for p in cmd.params if p.name == name)._custom_shell_complete

    from maestro_py.cli.common import complete_cadence, complete_running_id, complete_tick_id

    assert callback(runs_cli.runs_cmd, "cadence") is complete_cadence
    assert callback(tick_cli.tick.commands["kill"], "tick_id") is complete_running_id
    assert callback(tick_cli.tick.commands["log"], "tick_id") is complete_tick_id
