"""Shared test helpers live in tests/fixtures/: no test module, conftest or benchmark imports
another test module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # A relative import inside tests/ reaches a sibling test module by another name.
            names.add("." * node.level + (node.module or ""))
    return names


def test_only_fixtures_are_imported_from_tests() -> None:
    sources = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(sources) > 40
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources
        for name in sorted(imported_modules(path))
        if name.startswith(".")
        or (name.startswith("tests.") and not name.startswith("tests.fixtures"))
        or name.split(".")[-1].startswith(("test_", "conftest"))
    ]
    assert wrong == []
