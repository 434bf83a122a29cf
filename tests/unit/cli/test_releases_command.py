"""``appliance releases`` and ``releases prune`` as a user runs them, on a real depot layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.cli import run_cli
from tests.fixtures.releases import install, stage


def test_list_and_prune(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "releases", "--root", str(tmp_path))
    assert (code, out) == (0, f"no release is staged under {tmp_path}\n")
    for sequence in (1, 2, 3, 4):
        stage(tmp_path, f"2026.{sequence}", sequence)
        install(tmp_path, f"2026.{sequence}")
    code, out, _ = run_cli(capsys, "releases", "--root", str(tmp_path), "--json")
    assert code == 0
    listed = [(r["release"], r["state"], r["sequence"]) for r in json.loads(out)["releases"]]
    assert listed == [
        ("2026.4", "current", 4),
        ("2026.3", "previous", 3),
        ("2026.2", "superseded", 2),
        ("2026.1", "superseded", 1),
    ]
    code, out, _ = run_cli(capsys, "releases", "--root", str(tmp_path))
    assert out.splitlines()[0].startswith("2026.4  current     sequence 4  installed 20")

    # The first line says which releases go; the last, the bytes that frees (blocks on disk,
    # which depend on the filesystem: tests/unit/install/test_venvs.py counts them).
    code, out, _ = run_cli(capsys, "releases", "prune", "--root", str(tmp_path), "--dry-run")
    assert (code, out.splitlines()[0]) == (0, "would remove 1 release: 2026.1")
    assert out.splitlines()[1].startswith("would free ")
    code, out, _ = run_cli(capsys, "releases", "prune", "--root", str(tmp_path), "--keep", "0")
    assert (code, out.splitlines()[0]) == (0, "removed 2 releases: 2026.2, 2026.1")
    assert out.splitlines()[1].startswith("freed ")
    code, _, err = run_cli(capsys, "releases", "prune", "--root", str(tmp_path), "--keep", "-1")
    assert code == 2 and "-1 is not in the range x>=0" in err
