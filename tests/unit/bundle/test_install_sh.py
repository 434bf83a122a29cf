"""install.sh's installer venv: one per installer wheel set, so a bundle always runs its own
installer code, never the venv an earlier release left behind.

Real pip (the wheel CPython's ensurepip bundles) installs stand-ins for appliance's wheel: two
releases' installers, each a console script ``appliance`` that says which release it is and what
it was asked. What is under test is install.sh's choice of venv, not appliance itself.
"""

from __future__ import annotations

import base64
import ensurepip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry
from appliance.install.venvs import installer_id

Install = Callable[..., subprocess.CompletedProcess[str]]

STUB = """import sys
def main():
    print("installer {version}:", " ".join(sys.argv[1:]))
    print("link:", __import__("os").environ.get("APPLIANCE_VENV"))
    sys.exit(int(__import__("os").environ.get("STUB_EXIT", "0")))
"""


def _wheel(path: Path, version: str) -> None:
    """A valid appliance wheel whose console script is the stub of release ``version``."""
    dist = f"appliance-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: appliance\nVersion: {version}\n"
    files = {
        "appliance_stub.py": STUB.replace("{version}", version).encode(),
        f"{dist}/METADATA": metadata.encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\nappliance = appliance_stub:main\n",
    }
    record = (
        "".join(
            f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
            for name, data in files.items()
        )
        + f"{dist}/RECORD,,\n"
    )
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", record)


def _bundle(root: Path, version: str) -> Path:
    """What install.sh reads of a bundle: itself, the manifest's installer wheels, their blobs."""
    bundle = root / f"bundle-{version}"
    (bundle / "blobs").mkdir(parents=True)
    pip = next((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    _wheel(root / f"appliance-{version}-py3-none-any.whl", version)
    entries = []
    for wheel in (pip, root / f"appliance-{version}-py3-none-any.whl"):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        shutil.copyfile(wheel, bundle / "blobs" / digest)
        entries.append(
            {"path": f"blobs/{digest}", "sha256": digest, "kind": "wheel",
             "component": "wheels:installer", "name": wheel.name}
        )  # fmt: skip
    (bundle / layout.MANIFEST).write_text(json.dumps({"files": entries}))
    script = bundle / layout.INSTALL_SH
    script.write_bytes(resources.files("appliance.bundle").joinpath("install.sh").read_bytes())
    script.chmod(0o755)
    return bundle


@pytest.fixture
def run(tmp_path: Path) -> Install:
    # install.sh runs whatever python3 the host has; here, the one running the tests.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "APPLIANCE_VENV": str(tmp_path / "opt" / "venv"), "TMPDIR": str(tmp_path)}  # fmt: skip

    def install(bundle: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bundle / layout.INSTALL_SH), *args], env={**env, "STUB_EXIT": str(code)},
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    return install


def test_each_installer_gets_its_own_venv(tmp_path: Path, run: Install) -> None:
    install = run
    one, two = _bundle(tmp_path, "1.0"), _bundle(tmp_path, "2.0")
    venv = tmp_path / "opt" / "venv"
    # An install.sh before this one left a plain venv directory here, with release 1's code.
    venv.mkdir(parents=True)
    (venv / "stale").write_text("")

    first = install(one, "--pubkey", "k.pub")
    assert first.returncode == 0, first.stderr
    assert f"creating the installer venv {venv} from the bundle" in first.stdout
    assert f"installer 1.0: install --bundle {one} --pubkey k.pub" in first.stdout
    link_one = str(venv.readlink())
    assert link_one.startswith("venvs/") and not (venv / "stale").exists()

    # Release 2 runs release 2's installer, in a venv of its own, and then owns the link.
    second = install(two, "upgrade", "--pubkey", "k.pub")
    assert second.returncode == 0, second.stderr
    assert "creating the installer venv" in second.stdout
    assert f"installer 2.0: upgrade --bundle {two} --pubkey k.pub" in second.stdout
    link_two = str(venv.readlink())
    assert link_two != link_one
    assert subprocess.run([venv / "bin" / "appliance"], capture_output=True, text=True,
                          check=False).stdout.startswith("installer 2.0")  # fmt: skip

    # A plan, or a refused run, leaves the link on the installer of the running release.
    install(one, "upgrade", "--pubkey", "k.pub", "--plan-only")
    refused = install(one, "--pubkey", "k.pub", code=36)
    assert refused.returncode == 36
    assert str(venv.readlink()) == link_two

    # Release 1 again finds its venv complete and builds nothing.
    again = install(one, "--pubkey", "k.pub")
    assert again.returncode == 0, again.stderr
    assert "creating the installer venv" not in again.stdout
    assert "installer 1.0: install" in again.stdout and str(venv.readlink()) == link_one


def test_a_venv_left_half_built_is_built_again(tmp_path: Path, run: Install) -> None:
    install = run
    one = _bundle(tmp_path, "1.0")
    done = install(one, "--pubkey", "k.pub")
    target = tmp_path / "opt" / (tmp_path / "opt" / "venv").readlink()
    (target / ".complete").unlink()  # as a run killed during pip install leaves it
    again = install(one, "--pubkey", "k.pub")
    assert done.returncode == again.returncode == 0, again.stderr
    assert "creating the installer venv" in again.stdout
    assert (target / ".complete").is_file()


def test_a_first_install_that_fails_still_leaves_its_installer(
    tmp_path: Path, run: Install
) -> None:
    """Nothing runs yet to protect: the operator gets appliance to look at what went wrong."""
    install = run
    one = _bundle(tmp_path, "1.0")
    venv = tmp_path / "opt" / "venv"
    failed = install(one, "--pubkey", "k.pub", code=30)
    assert failed.returncode == 30
    assert str(venv.readlink()).startswith("venvs/")
    assert subprocess.run([venv / "bin" / "appliance"], capture_output=True, text=True,
                          check=False).stdout.startswith("installer 1.0")  # fmt: skip


def test_the_venv_is_the_one_the_installer_finds_by_the_manifest(
    tmp_path: Path, run: Install
) -> None:
    """Rollback and prune find a release's venv from its signed manifest alone (venvs.py), and
    the link from APPLIANCE_VENV, which install.sh hands to the installer."""
    one = _bundle(tmp_path, "1.0")
    done = run(one, "--pubkey", "k.pub")
    assert done.returncode == 0, done.stderr
    venv = tmp_path / "opt" / "venv"
    assert f"link: {venv}" in done.stdout
    entries = json.loads((one / layout.MANIFEST).read_text())["files"]
    files = [FileEntry(size=1, **entry) for entry in entries]
    assert venv.readlink() == Path("venvs") / str(installer_id(files))
