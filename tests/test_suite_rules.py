"""The suite's own rules: shared helpers live in conftest fixtures and support modules, fakes stay out of the package."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.fakes import REPO


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything `path` imports, `from a import b` giving both `a` and `a.b`."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
            out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return out


def test_no_test_module_imports_from_a_test_module_or_a_conftest() -> None:
    offenders = [f"{path.relative_to(REPO)}:{line} imports {name}"
                 for path in sorted((REPO / "tests").rglob("*.py"))
                 for line, name in imported_modules(path)
                 if name.rsplit(".", 1)[-1].startswith("test_") or name.rsplit(".", 1)[-1] == "conftest"]
    assert offenders == [], "move shared helpers to tests/fakes.py, a conftest fixture or a support module"


def test_the_package_defines_no_fakes() -> None:
    fakes = [f"{path.relative_to(REPO)}: {node.name}"
             for path in sorted((REPO / "maestro_py").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.ClassDef) and node.name.startswith("Fake")]
    assert fakes == [], "fakes belong in tests/fakes.py"
