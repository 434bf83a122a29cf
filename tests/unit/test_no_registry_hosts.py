"""No tracked file names a package-registry host this machine is configured with.

The hosts are read, never written: from every URIs: and deb line of this machine's apt sources
(enabled or not), from pip's configuration and pip's own default index and file hosts, and from
npm's registry where npm is installed. Specs, tests and the harness take the mirror from the
environment (``${DEBIAN_MIRROR}``) or from that same configuration instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pip._internal.models.index import PyPI

ROOT = Path(__file__).resolve().parents[2]
APT = Path("/etc/apt")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\]'\"]+")
_SOURCE_LINE = re.compile(r"^\s*#?\s*(?:uris\s*:|deb(?:-src)?\s)", re.IGNORECASE)


def hosts_in(urls: list[str]) -> set[str]:
    return {host.lower() for url in urls if (host := urlsplit(url).hostname)}


def apt_hosts(apt: Path = APT) -> set[str]:
    """Hosts of every URIs: and deb line in sources.list and every file of sources.list.d."""
    files = [apt / "sources.list"]
    if (apt / "sources.list.d").is_dir():
        files += sorted((apt / "sources.list.d").iterdir())
    urls: list[str] = []
    for path in files:
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if _SOURCE_LINE.match(line):
                    urls += _URL.findall(line)
    return hosts_in(urls)


def pip_hosts() -> set[str]:
    """Hosts in ``pip config list``, and pip's own default index and file hosts."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return hosts_in(_URL.findall(listed)) | {PyPI.netloc, PyPI.file_storage_domain}


def npm_hosts() -> set[str]:
    npm = shutil.which("npm")
    if npm is None:
        return set()
    registry = subprocess.run(
        [npm, "config", "get", "registry"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return hosts_in(_URL.findall(registry))


def tracked_files() -> list[Path]:
    done = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False, timeout=60
    )
    if done.returncode != 0:
        pytest.skip("not a git checkout: nothing tracked to search")
    paths = [ROOT / name for name in done.stdout.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def test_apt_lines_are_read_enabled_or_not(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/k.gpg] http://one.invalid/debian bookworm main\n"
        "# deb-src https://two.invalid:8080/debian bookworm main\n"
        "# a comment that names http://not-a-source.invalid/\n"
    )
    (tmp_path / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://three.invalid/debian https://four.invalid/\n"
        "Suites: bookworm\nComponents: main\nEnabled: no\n"
    )
    (tmp_path / "sources.list.d" / "b.list.disabled").write_text(
        "deb http://five.invalid/apt stable main\n"
    )
    assert apt_hosts(tmp_path) == {
        "one.invalid",
        "two.invalid",
        "three.invalid",
        "four.invalid",
        "five.invalid",
    }


def test_no_tracked_file_names_a_configured_registry_host() -> None:
    hosts = apt_hosts() | pip_hosts() | npm_hosts()
    # pip's own defaults are always there: the search below is never empty.
    assert {PyPI.netloc, PyPI.file_storage_domain} <= hosts
    needles = {host: host.encode() for host in hosts}
    found = []
    for path in tracked_files():
        text = path.read_bytes().lower()
        found += [
            f"{path.relative_to(ROOT)} names {host}"
            for host, needle in needles.items()
            if needle in text
        ]
    assert found == [], "take the mirror from ${DEBIAN_MIRROR} or this machine's configuration"
