"""The installer venvs beside the releases: which one the link names after a rollback, which ones
prune removes, and the bytes it frees, on real directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bundle.manifest import parse_manifest
from appliance.errors import InstallError
from appliance.install.prune import prune_depot
from appliance.install.release_state import StateRecord, current_release, list_releases
from appliance.install.transition import commit
from appliance.install.upgrade_state import transition_lock
from appliance.install.venvs import installer_id, point_venv, venvs_dir
from tests.fixtures.releases import install, release, stage

MiB = 1 << 20


@pytest.fixture
def link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """install.sh's link, as it exports it to the installer it runs."""
    path = tmp_path / "opt" / "venv"
    monkeypatch.setenv("APPLIANCE_VENV", str(path))
    return path


def venv_of(root: Path, label: str) -> Path:
    """The venv install.sh builds for the release's installer wheels, by its signed manifest."""
    path = root / "releases" / label / "manifest.json"
    venv_id = installer_id(parse_manifest(path.read_bytes(), str(path)).files)
    assert venv_id is not None
    return venvs_dir(root) / venv_id


def build_venv(venv: Path, payload: int = MiB) -> None:
    """What install.sh leaves: a venv directory marked complete (here with ``payload`` bytes)."""
    (venv / "bin").mkdir(parents=True)
    (venv / "lib.bin").write_bytes(os.urandom(payload))
    (venv / ".complete").write_bytes(b"")


def depot(root: Path, installers: dict[str, str]) -> None:
    """Releases staged and installed in order (release label -> its installer wheels' tag)."""
    for sequence, (label, tag) in enumerate(installers.items(), start=1):
        manifest = release(label, sequence, wheels={"installer": tag, "llamacpp": "l1"})
        stage(root, label, sequence, manifest)
        install(root, label)


def disk_usage(*paths: Path) -> int:
    """du's count of the blocks under ``paths`` (each inode once), in bytes."""
    done = subprocess.run(
        ["du", "-s", "-c", "-B1", *map(str, paths)], capture_output=True, text=True, check=True
    )
    return int(done.stdout.splitlines()[-1].split()[0])


def test_a_rollback_points_the_link_at_the_installer_of_the_release_that_runs(
    tmp_path: Path, link: Path
) -> None:
    root = tmp_path / "root"
    depot(root, {"r1": "i1", "r2": "i2"})
    for label in ("r1", "r2"):
        build_venv(venv_of(root, label), payload=10)
    link.symlink_to(Path("venvs") / venv_of(root, "r2").name)  # install.sh's, after r2
    notes: list[str] = []

    commit(root, "r1", "r2", notes.append)  # appliance rollback's commit: r1 runs again
    assert current_release(root) == "r1"
    assert StateRecord.load(root).previous == "r2"
    assert link.readlink() == Path("venvs") / venv_of(root, "r1").name
    assert (link / ".complete").is_file() and notes == []

    # An automatic rollback: current never moved, the link had (the upgrade's install.sh).
    link.unlink()
    link.symlink_to(Path("venvs") / venv_of(root, "r2").name)
    commit(root, "r1", "r1", notes.append)
    assert link.readlink() == Path("venvs") / venv_of(root, "r1").name and notes == []


def test_the_link_stays_when_the_release_has_no_venv_here(tmp_path: Path, link: Path) -> None:
    root = tmp_path / "root"
    depot(root, {"r1": "i1", "r2": "i2"})
    assert point_venv(root, "r1") is None  # no link: nothing was installed by install.sh
    build_venv(venv_of(root, "r2"), payload=10)
    link.symlink_to(Path("venvs") / venv_of(root, "r2").name)
    assert point_venv(root, "r1") == (
        f"{link} still names the installer it named: release r1's installer venv is not on "
        "this machine (run release r1's install.sh to build it)"
    )
    assert link.readlink() == Path("venvs") / venv_of(root, "r2").name


def test_prune_takes_the_venvs_only_pruned_releases_used(
    tmp_path: Path, link: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    # r4 shares r3's installer; r0's venv serves the installer running this prune.
    depot(root, {"r0": "i0", "r1": "i1", "r2": "i2", "r3": "i3", "r4": "i3"})
    venvs = {label: venv_of(root, label) for label in ("r0", "r1", "r2", "r3")}
    for venv in venvs.values():
        build_venv(venv)
    link.symlink_to(Path("venvs") / venvs["r3"].name)
    monkeypatch.setattr(sys, "prefix", str(venvs["r0"]))
    # A file r1 shares with r4 (a delta links its base's files): pruning r1 frees none of it.
    shared = root / "releases" / "r1" / "model.gguf"
    shared.write_bytes(os.urandom(MiB))
    os.link(shared, root / "releases" / "r4" / "model.gguf")

    doomed = ["r2", "r1", "r0"]
    trees = [root / "releases" / n for r in doomed for n in (r, f"{r}.ansible")]
    expected = disk_usage(*trees, venvs["r1"], venvs["r2"]) - disk_usage(shared)
    would = prune_depot(root, 0, dry_run=True)
    assert would.releases == doomed
    assert would.venvs == sorted(str(venvs[r]) for r in ("r1", "r2"))
    assert would.freed == expected and would.freed > 2 * MiB
    assert all(v.is_dir() for v in venvs.values())

    done = prune_depot(root, 0)
    assert done == would
    assert [r.release for r in list_releases(root)[0]] == ["r4", "r3"]
    # Kept: current's and previous's (one venv), the running installer's.
    assert sorted(p.name for p in venvs_dir(root).iterdir() if not p.name.startswith(".")) == (
        sorted([venvs["r3"].name, venvs["r0"].name])
    )
    assert (root / "releases" / "r4" / "model.gguf").stat().st_nlink == 1  # r4 keeps its file


def test_prune_waits_for_no_run_and_names_the_one_holding_the_lock(
    tmp_path: Path, link: Path
) -> None:
    root = tmp_path / "root"
    depot(root, {"r1": "i1", "r2": "i2", "r3": "i3"})
    with transition_lock(root, "appliance install"), pytest.raises(InstallError) as refused:
        prune_depot(root, 0)
    assert refused.value.message.startswith(f"appliance install (pid {os.getpid()}, since 20")
    assert refused.value.message.endswith(
        f"holds this depot's transition lock ({root}/upgrade.lock): one install, upgrade, "
        "rollback or prune runs at a time"
    )
    assert [r.release for r in list_releases(root)[0]] == ["r3", "r2", "r1"]


def test_releases_list_their_size_and_venv(tmp_path: Path, link: Path) -> None:
    root = tmp_path / "root"
    depot(root, {"r1": "i1", "r2": "i2"})
    build_venv(venv_of(root, "r2"), payload=10)
    (root / "releases" / "r2" / "model.gguf").write_bytes(os.urandom(MiB))
    found = {r.release: r for r in list_releases(root)[0]}
    assert found["r2"].venv == str(venv_of(root, "r2"))
    assert found["r1"].venv is None  # its venv was never built here
    expected = disk_usage(root / "releases" / "r2", root / "releases" / "r2.ansible")
    assert found["r2"].size == expected and expected > MiB
    assert set(found["r2"].as_dict()) >= {"release", "state", "size", "venv"}
