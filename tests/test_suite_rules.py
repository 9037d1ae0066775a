"""The suite's own rules: fakes stay out of the package."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_package_defines_no_fakes() -> None:
    fakes = [f"{path.relative_to(REPO)}: {node.name}"
             for path in sorted((REPO / "maestro_py").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.ClassDef) and node.name.startswith("Fake")]
    assert fakes == [], "fakes belong in tests/fakes.py"
