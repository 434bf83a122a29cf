"""The preflight role's disk module, on this machine's real filesystems."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from appliance.roles import ROLES_DIR

MODULE = ROLES_DIR / "preflight" / "library" / "appliance_disk_space.py"


@pytest.fixture(scope="module")
def disk() -> ModuleType:
    spec = importlib.util.spec_from_file_location("appliance_disk_space", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paths_that_do_not_exist_yet_count_on_their_nearest_parent(
    disk: ModuleType, tmp_path: Path
) -> None:
    future = tmp_path / "opt" / "appliance" / "releases"
    result = disk.filesystems([{"path": str(future), "bytes": 10, "purpose": "bundle"}], 0)
    stats = os.statvfs(tmp_path)
    assert len(result) == 1
    assert result[0]["required_bytes"] == 10
    # Free space changes as other processes write; the same filesystem stays within 64 MiB.
    assert abs(result[0]["available_bytes"] - stats.f_bavail * stats.f_frsize) < 64 << 20


def test_requirements_on_one_filesystem_add_up_with_the_reserve(
    disk: ModuleType, tmp_path: Path
) -> None:
    requirements = [
        {"path": str(tmp_path / "bundle"), "bytes": 100, "purpose": "bundle"},
        {"path": str(tmp_path / "data"), "bytes": 50, "purpose": "data"},
    ]
    (result,) = disk.filesystems(requirements, 7)
    assert result["required_bytes"] == 157
    assert [e["purpose"] for e in result["entries"]] == ["bundle", "data"]


def test_separate_filesystems_are_reported_separately(disk: ModuleType, tmp_path: Path) -> None:
    # /proc is always its own filesystem; it is only read here.
    requirements = [
        {"path": str(tmp_path), "bytes": 1, "purpose": "bundle"},
        {"path": "/proc/appliance-never-created", "bytes": 2, "purpose": "data"},
    ]
    result = disk.filesystems(requirements, 0)
    assert [fs["required_bytes"] for fs in result] == [1, 2]
    assert result[1]["mount"] == "/proc"


def test_mount_point_of_root(disk: ModuleType) -> None:
    assert disk.mount_point("/") == "/"
