"""appliance's own wheel, written from the installed distribution: reproducible, complete,
and installable by pip with no index."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from appliance import __version__
from appliance.fetchers.own_wheel import (
    OwnDistribution,
    cache_key,
    own_distribution,
    package_files,
    write_wheel,
)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A small package tree with what must and must not go into a wheel."""
    root = tmp_path / "src" / "demo"
    (root / "sub" / "__pycache__").mkdir(parents=True)
    (root / "__init__.py").write_text("VALUE = 1\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (root / "stray.pyc").write_bytes(b"\0")
    (root / "data").mkdir()
    (root / "data" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "data" / "tool.sh").chmod(0o755)
    return root


def fake_dist(package: Path) -> OwnDistribution:
    metadata = b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.2\n"
    entry_points = b"[console_scripts]\ndemo-tool = demo:main\n"
    return OwnDistribution(
        "demo-pkg", "1.2", {"METADATA": metadata, "entry_points.txt": entry_points}, package
    )


def test_the_wheel_holds_the_package_and_its_metadata_not_byte_code(package: Path) -> None:
    dist = fake_dist(package)
    data = write_wheel(dist, package_files(package))
    assert dist.filename == "demo_pkg-1.2-py3-none-any.whl"
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        assert wheel.namelist() == [
            "demo/__init__.py",
            "demo/data/tool.sh",
            "demo/sub/__init__.py",
            "demo_pkg-1.2.dist-info/METADATA",
            "demo_pkg-1.2.dist-info/entry_points.txt",
            "demo_pkg-1.2.dist-info/WHEEL",
            "demo_pkg-1.2.dist-info/RECORD",
        ]
        modes = {i.filename: i.external_attr >> 16 for i in wheel.infolist()}
        assert modes["demo/data/tool.sh"] == 0o100755
        assert modes["demo/__init__.py"] == 0o100644
        assert {i.date_time for i in wheel.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert (
            "Root-Is-Purelib: true\nTag: py3-none-any\n"
            in wheel.read("demo_pkg-1.2.dist-info/WHEEL").decode()
        )
        record = list(csv.reader(io.StringIO(wheel.read("demo_pkg-1.2.dist-info/RECORD").decode())))
        assert record[-1] == ["demo_pkg-1.2.dist-info/RECORD", "", ""]
        for name, digest, size in record[:-1]:
            content = wheel.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={expected.decode()}", len(content))
        assert len(record) == len(wheel.namelist())


def test_equal_content_gives_identical_bytes_and_a_change_gives_another_key(
    package: Path,
) -> None:
    dist = fake_dist(package)
    first = write_wheel(dist, package_files(package))
    (package / "__init__.py").touch()  # a new mtime, the same content
    assert write_wheel(dist, package_files(package)) == first
    key = cache_key(dist, package_files(package))
    (package / "data" / "tool.sh").chmod(0o644)
    assert cache_key(dist, package_files(package)) != key
    (package / "data" / "tool.sh").chmod(0o755)
    assert cache_key(dist, package_files(package)) == key
    (package / "__init__.py").write_text("VALUE = 2\n")
    assert cache_key(dist, package_files(package)) != key


def test_appliance_own_wheel_installs_offline_and_imports(tmp_path: Path) -> None:
    dist = own_distribution()
    assert (dist.name, dist.version) == ("appliance", __version__)
    wheel = tmp_path / dist.filename
    wheel.write_bytes(write_wheel(dist, package_files(dist.package)))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-index", "--no-deps", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    # No dependencies are installed, so import what needs only the standard library.
    probe = subprocess.run(
        [str(python), "-c",
         "import appliance, appliance.bundle.layout, importlib.metadata as m, pathlib; "
         "p = pathlib.Path(appliance.__file__).parent; "
         "print(m.version('appliance'), (p / 'ansible/playbooks/site.yml').is_file(), "
         "(p / 'bundle/install.sh').is_file(), "
         "oct((p / 'ansible/roles/runtime_llamacpp/files/appliance-llamacpp').stat().st_mode "
         "& 0o777), sorted(e.name for e in m.entry_points(group='console_scripts')))"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split(" ", 4) == [
        __version__,
        "True",
        "True",
        "0o755",
        "['appliance', 'appliance-audit-forward', 'appliance-gateway']\n",
    ]
    assert (venv / "bin" / "appliance").is_file()
