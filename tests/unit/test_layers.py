"""The package's layers, from the imports themselves: bundle/ is a leaf (fetchers, the build
and the installer use it, never the other way round), fetchers/ does not reach up into the
build's orchestration or the installer, and sizing/ (used by the CLI, the build, the installer
and preflight) reaches none of them. A cycle between them cannot come back unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import appliance

PACKAGE = Path(appliance.__file__).resolve().parent


def imported(package: str) -> dict[str, set[str]]:
    """Module path -> every appliance module it imports (at any depth in the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(PACKAGE))] = {n for n in names if n.startswith("appliance")}
    return found


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        (
            "bundle",
            ("appliance.bundle", "appliance.errors", "appliance.names", "appliance.progress"),
        ),
        (
            "fetchers",
            (
                "appliance.fetchers",
                "appliance.bundle",
                "appliance.errors",
                "appliance.names",
                "appliance.progress",
                "appliance.spec",
                "appliance.roles",
            ),
        ),
        (
            # Sizing reads files and does arithmetic; the spec and a bundle's manifest are the
            # only things above a leaf it reads.
            "sizing",
            ("appliance.sizing", "appliance.errors", "appliance.spec", "appliance.bundle.manifest"),
        ),
    ],
)
def test_a_layer_imports_only_what_lies_below_it(package: str, allowed: tuple[str, ...]) -> None:
    reaching_up = {
        module: sorted(n for n in names if n != "appliance" and not n.startswith(allowed))
        for module, names in imported(package).items()
    }
    assert {m: n for m, n in reaching_up.items() if n} == {}
