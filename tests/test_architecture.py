"""The package's shape: what the CLI imports, no import cycle between modules or packages, the package layering, no
oversized module."""

from __future__ import annotations

import ast
import graphlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from maestro_py.cli import COMMANDS, cli
from maestro_py.paths import Folder, Layout

REPO = Path(__file__).resolve().parent.parent

# Runs `maestro ARGS` through the console-script entry point and writes, at exit, every module the process
# imported (atexit runs after main()'s sys.exit).
IMPORTS_OF = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
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


def test_enqueue_loads_no_claim_backoff_budget_fleet_or_handler_machinery(tmp_path: Path) -> None:
    """What an enqueue never uses stays unloaded: psutil (a claim's owner), tenacity (backoff waits), the budget,
    the fleet governor and the inline handler calls (subprocess, threads). `.env` is read (python-dotenv): its
    settings (MAESTRO_MAX_INBOX) apply to the enqueue, and a bad one fails it."""
    root = tmp_path / "agent"
    assert CliRunner().invoke(cli, ["--root", str(root), "init"]).exit_code == 0
    modules = set(imports_of(tmp_path, "--root", str(root), "enqueue", "hello", "--source", "cron"))
    assert len(list(Layout(root).folder(Folder.INBOX).glob("*.json"))) == 1
    assert {"dotenv", "maestro_py.config", "maestro_py.registry", "maestro_py.bus.store"} <= modules  # it did load
    unused = {"psutil", "tenacity", "maestro_py.policy.budget", "maestro_py.fleet", "maestro_py.inline",
              "subprocess", "ctypes"}
    assert sorted(unused & modules) == []


def test_help_lists_every_lazy_command_with_its_short_help() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == sorted([*COMMANDS, "help"])  # help is no lazy command
    assert all(len(line.split()) > 1 for line in listed)  # each with the first line of its docstring
    for name in COMMANDS:
        assert cli.get_command(None, name).name == name  # type: ignore[arg-type,union-attr]


# -- the import graph ------------------------------------------------------------------------------

PACKAGE = REPO / "maestro_py"
MAX_LINES = 400
LAZY = re.compile(r"maestro_py(\.\w+)+(:\w+)?")  # a module named in a string, for importlib


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """maestro_py/bus/store.py -> maestro_py.bus.store; a package's __init__.py -> the package."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, subpackages included (walked, not listed)."""
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, me: str, is_package: bool) -> set[str]:
    """Dotted names a module imports, at any depth (a function-level import is still an import), except
    under `if TYPE_CHECKING:`; a "maestro_py.x:attr" / "maestro_py.x" string constant counts too (lazy
    loading by name, as the CLI's group does). `from a import b` yields a.b; the caller resolves it."""
    out: set[str] = set()
    package = me if is_package else me.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            out.update(base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY.fullmatch(node.value):
            out.add(node.value.partition(":")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the maestro_py modules it imports."""
    known = modules(package)
    graph: dict[str, set[str]] = {}
    for me, path in known.items():
        edges: set[str] = set()
        for name in imported_names(ast.parse(path.read_text(), str(path)), me, path.name == "__init__.py"):
            while name and name not in known:  # `from pkg import attr`: the edge is to pkg
                name = name.rpartition(".")[0]
            if not name:
                continue  # not a maestro_py module (stdlib, click …)
            edges.add(name)
            # Importing a.b.c runs a's and a.b's __init__ first. The packages that contain this module
            # are already being initialised when it runs, so only the others are edges (an explicit
            # `from maestro_py.cli import x` inside cli/ still is one: it is its own import statement).
            parts = name.split(".")
            edges.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                         if not (me == p or me.startswith(p + ".")))
        edges.discard(me)
        graph[me] = edges
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (first module repeated at the end), or [] if there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return []


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "maestro_py.bus.store" in graph["maestro_py.cli.bus"]  # the walk sees subpackages
    assert "maestro_py.cli.bus" in graph["maestro_py.cli"]  # and the lazy group's "module:attr" strings
    found = cycle(graph)
    assert not found, "import cycle: " + " -> ".join(found)


def test_the_old_cli_shape_is_a_cycle(tmp_path: Path) -> None:
    """A group that imports, for its side effect, a module that imports the group back (the old cli/)."""
    cli_dir = tmp_path / "maestro_py" / "cli"
    cli_dir.mkdir(parents=True)
    (tmp_path / "maestro_py" / "__init__.py").write_text("")
    (cli_dir / "__init__.py").write_text("import click\ncli = click.Group()\nfrom maestro_py.cli import doctor\n")
    (cli_dir / "doctor.py").write_text("def f():\n    from maestro_py.cli import cli\n")
    (cli_dir / "common.py").write_text("from maestro_py.cli import doctor\n")  # a submodule: no edge to cli
    graph = import_graph(tmp_path / "maestro_py")
    assert graph["maestro_py.cli.common"] == {"maestro_py.cli.doctor"}
    assert cycle(graph) in (["maestro_py.cli", "maestro_py.cli.doctor", "maestro_py.cli"],
                            ["maestro_py.cli.doctor", "maestro_py.cli", "maestro_py.cli.doctor"])


def test_the_walk_counts_lazy_and_relative_imports_but_not_type_checking_ones() -> None:
    tree = ast.parse(textwrap.dedent("""
        from typing import TYPE_CHECKING
        from . import tick
        if TYPE_CHECKING:
            from maestro_py.daemon.loop import Daemon
        def later():
            from maestro_py.ops import doctor
            return "maestro_py.cli.bus:init"
    """))
    names = imported_names(tree, "maestro_py.bus.store", is_package=False)
    assert {"maestro_py.bus.tick", "maestro_py.ops.doctor", "maestro_py.cli.bus"} <= names
    assert not any(name.startswith("maestro_py.daemon") for name in names)


# -- the package rules -----------------------------------------------------------------------------

LAYERS = ("bus", "session", "policy", "daemon")  # each may import those before it, never those after
READ_ONLY = ("ops", "serve", "state")  # they know the daemon only by its files (read through state.py)


def package_of(module: str) -> str:
    """The package a module counts in: maestro_py.bus.store -> bus; a top-level module is its own (config)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages its modules import (the root package `maestro_py`, which imports nothing of
    ours, is left out)."""
    out: dict[str, set[str]] = {}
    for module, edges in graph.items():
        if module == PACKAGE.name:
            continue
        mine = out.setdefault(package_of(module), set())
        mine.update(package_of(e) for e in edges if e != PACKAGE.name and package_of(e) != package_of(module))
    return out


def show(packages: dict[str, set[str]]) -> str:
    """The package graph as text, one `package -> packages it imports` line each."""
    return "\n".join(f"  {p} -> {', '.join(sorted(packages[p])) or '(nothing)'}" for p in sorted(packages))


def broken_rules(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a package rule, named by module (empty: the layering holds)."""
    out: list[str] = []
    for module, edges in sorted(graph.items()):
        here = package_of(module)
        named = {e for e in edges if not any(other.startswith(e + ".") for other in edges)}  # not also its package
        for edge in sorted(named):
            there = package_of(edge)
            if there == here:
                continue
            if here in LAYERS and there in LAYERS and LAYERS.index(there) > LAYERS.index(here):
                out.append(f"{module} imports {edge}: {here} is below {there} ({' < '.join(LAYERS)})")
            if there == "daemon" and here not in ("daemon", "cli"):
                why = " (read the daemon's state through maestro_py.state)" if here in READ_ONLY else ""
                out.append(f"{module} imports {edge}: only daemon/ and cli/ import the daemon{why}")
    packages = package_graph(graph)
    found = cycle(packages)
    if found:
        out.append("package cycle: " + " -> ".join(found))
    return out


def test_the_package_rules_hold() -> None:
    graph = import_graph()
    packages = package_graph(graph)
    assert {"state", "config", "bus", "daemon", "cli"} <= set(packages)  # top-level modules are packages here
    broken = broken_rules(graph)
    assert not broken, "\n".join(["package rules broken:", *broken, "package graph:", show(packages)])


def test_the_rules_catch_a_reversed_layer_a_daemon_import_and_a_package_cycle(tmp_path: Path) -> None:
    root = tmp_path / "maestro_py"
    files = {
        "__init__.py": "", "state.py": "", "config.py": "from maestro_py.ops import views\n",
        "bus/__init__.py": "", "bus/store.py": "def f():\n    from maestro_py.session import runner\n",
        "session/__init__.py": "", "session/runner.py": "",
        "daemon/__init__.py": "", "daemon/status.py": "import maestro_py.state\n",
        "ops/__init__.py": "", "ops/views.py": "from maestro_py.daemon.status import x\nfrom maestro_py import config\n",
        "cli/__init__.py": "", "cli/daemon.py": "from maestro_py.daemon import status\n",
        "serve/__init__.py": "",
        "serve/app.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from maestro_py.daemon import status\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(root)
    broken = broken_rules(graph)
    assert broken[0] == ("maestro_py.bus.store imports maestro_py.session.runner: bus is below session "
                         "(bus < session < policy < daemon)")
    assert [b for b in broken if "only daemon/" in b] == [
        "maestro_py.ops.views imports maestro_py.daemon.status: only daemon/ and cli/ import the daemon (read the "
        "daemon's state through maestro_py.state)"]  # not cli/daemon.py, not serve/app.py (TYPE_CHECKING only)
    assert broken[-1] in ("package cycle: config -> ops -> config", "package cycle: ops -> config -> ops")
    assert show(package_graph(graph)).splitlines()[:3] == ["  bus -> session", "  cli -> daemon",
                                                            "  config -> ops"]


def test_no_module_is_over_400_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert over == {}, f"over {MAX_LINES} lines: " + ", ".join(f"{name} ({n})" for name, n in sorted(over.items()))

