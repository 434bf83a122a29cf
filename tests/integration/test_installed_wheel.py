"""appliance installed from its wheel, outside any checkout, builds a bundle that verifies and
installs on an air-gapped host: nothing of the build reads the source tree.

The wheel is built the way ``pip install .`` builds it (pip wheel, setuptools in an isolated
build environment), from a copy of the working tree, and installed into a fresh venv in an
empty directory; every command then runs from that directory with no PYTHONPATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
Run = Callable[..., subprocess.CompletedProcess[str]]
Host = Callable[..., tuple[str, Run]]


def debian_mirror() -> str | None:
    """The Debian archive this machine uses: DEBIAN_MIRROR, as the harness reads it, else the
    first deb822 or one-line source of the machine's own apt configuration."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file() or path.suffix not in {".list", ".sources", ""}:
            continue
        text = path.read_text(errors="replace")
        found = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", text, re.M
        )
        if found and "security" not in found[1]:
            return found[1]
    return None


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with appliance installed from a wheel built from this working tree."""
    root = tmp_path_factory.mktemp("wheel")
    tree = root / "src"
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    # As `pip install .` builds it: setuptools in an isolated build environment.
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
        "--wheel-dir", root / "dist", tree, cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("appliance-*.whl")
    empty = root / "empty"
    empty.mkdir()
    run(sys.executable, "-m", "venv", empty / "venv", cwd=empty)
    run(empty / "venv/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "-c", ROOT / "requirements/constraints.txt", wheel, cwd=empty)  # fmt: skip
    return empty


def test_a_wheel_installed_appliance_builds_a_bundle_that_installs_offline(
    installed: Path, systemd_host: Host
) -> None:
    mirror = debian_mirror()
    if mirror is None:
        pytest.skip("no Debian mirror: set DEBIAN_MIRROR or configure apt on this machine")
    appliance = installed / "venv/bin/appliance"
    where = run(installed / "venv/bin/python", "-c", "import appliance; print(appliance.__file__)",
                cwd=installed)  # fmt: skip
    assert where.stdout.startswith(str(installed / "venv/lib/"))
    (installed / "spec.yaml").write_text(
        "version: 1\nname: from-wheel\nrelease: '1.0'\n"
        "targets: [{os: debian-12, arch: amd64}]\n"
        "stack: {orchestrator: systemd, registry: none, object_store: filesystem, "
        "runtime: llamacpp}\n"
        "packages:\n  sources:\n"
        f"    - {{kind: apt, url: '{mirror}', suites: [bookworm], components: [main], "
        "keyring: /usr/share/keyrings/debian-archive-keyring.gpg}\n"
        "  install: [jq]\n"
    )
    run(appliance, "keygen", "-o", "key", cwd=installed)
    built = run(appliance, "build-bundle", "spec.yaml", "-o", "bundle", "--sign-key", "key",
                cwd=installed)  # fmt: skip
    assert built.stdout.startswith("built bundle: from-wheel 1.0, "), built.stdout
    assert built.stderr == ""  # no warning: the spec carries the roles' packages
    verified = run(appliance, "verify-bundle", "bundle", "--pubkey", "key.pub", cwd=installed)
    assert verified.stdout.startswith("bundle: verified from-wheel 1.0: signature good, ")

    _, host = systemd_host(
        {installed / "bundle": "/srv/bundle", installed / "key.pub": "/srv/key.pub"}
    )
    result = host("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "creating the installer venv /opt/appliance/venv from the bundle" in result.stdout
    assert result.stdout.splitlines()[-2].startswith("installed from-wheel 1.0 on 1 host in ")
    assert host("jq", "--version").stdout.strip() == "jq-1.6"
    version = host("/opt/appliance/venv/bin/appliance", "--version").stdout
    assert version == run(appliance, "--version", cwd=installed).stdout
