"""The harness finds the Debian mirror in this machine's apt sources, as apt reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.debian_mirror import NoMirrorError, debian_mirror

SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "debian_mirror.py"
SECURITY = """\
Types: deb
URIs: http://security.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def apt(tmp_path: Path, sources_list: str = "", **parts: str) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    if sources_list:
        (tmp_path / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (tmp_path / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return tmp_path


def test_a_deb822_source_for_bookworm_main(tmp_path: Path) -> None:
    root = apt(
        tmp_path,
        debian_sources=SECURITY
        + "\n# a comment\nTypes: deb deb-src\nURIs: http://mirror.invalid/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n",
    )
    assert debian_mirror(root, {}) == "http://mirror.invalid/debian"


def test_disabled_stanzas_other_suites_and_other_files_are_skipped(tmp_path: Path) -> None:
    root = apt(
        tmp_path,
        a_sources="Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n",
        b_list_disabled="deb http://ignored.invalid/debian bookworm main\n",
        c_list="deb-src http://source.invalid/debian bookworm main\n"
        "deb http://trixie.invalid/debian trixie main\n"
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://on.invalid/debian bookworm main\n",
    )
    assert debian_mirror(root, {}) == "https://on.invalid/debian"


def test_sources_list_comes_first(tmp_path: Path) -> None:
    root = apt(
        tmp_path,
        "deb http://first.invalid/debian bookworm main non-free\n",
        z_sources="Types: deb\nURIs: http://later.invalid/debian\nSuites: bookworm\n"
        "Components: main\n",
    )
    assert debian_mirror(root, {}) == "http://first.invalid/debian"


def test_the_environment_wins(tmp_path: Path) -> None:
    root = apt(tmp_path, "deb http://apt.invalid/debian bookworm main\n")
    assert debian_mirror(root, {"DEBIAN_MIRROR": "http://env.invalid/d"}) == "http://env.invalid/d"
    assert debian_mirror(root, {"DEBIAN_MIRROR": ""}) == "http://apt.invalid/debian"


def test_no_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoMirrorError, match=r"set DEBIAN_MIRROR to the URL of a Debian mirror$"):
        debian_mirror(apt(tmp_path, debian_sources=SECURITY), {})


def test_the_script_prints_it_for_the_shell_scripts() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={"DEBIAN_MIRROR": "http://env.invalid/debian"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "http://env.invalid/debian\n", "")
