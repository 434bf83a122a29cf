"""Staging a verified bundle as a release, without a host: copies, deltas, reuse, refusal."""

from __future__ import annotations

import io
import re
import stat
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry, Manifest
from appliance.bundle.pack import pack
from appliance.bundle.verify import open_bundle, verify_dir
from appliance.errors import BundleCorruptError, InstallError
from appliance.install.stage import ansible_content, stage
from tests.fixtures.bundles import (
    flip_byte,
    make_bundle,
    make_delta,
    new_manifest,
    path_of,
    read_entries,
)

Keys = tuple[Path, Path, Path]


def staged(bundle: Path, pubkey: Path, root: Path) -> tuple[Manifest, Path]:
    """What install does: open the bundle once, verified, and stage it under ``root``."""
    with open_bundle(bundle, pubkey) as opened:
        return opened.manifest, stage(opened, root)


def inodes(root: Path) -> set[int]:
    return {p.stat().st_ino for p in root.rglob("*") if p.is_file()}


def test_a_release_is_a_copy_that_shares_nothing_with_the_bundle(
    tmp_path: Path, keys: Keys
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    manifest, release = staged(bundle, keys[1], tmp_path / "root")
    assert release == tmp_path / "root" / "releases" / "1"
    assert not inodes(bundle) & inodes(release)
    assert stat.S_IMODE((release / "install.sh").stat().st_mode) == 0o755
    assert verify_dir(release, keys[1]).files == len(manifest.files)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["releases"]


def test_a_packed_bundle_is_staged_straight_from_the_stream(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    with (tmp_path / "b.tar").open("wb") as out:
        pack(bundle, out)
    _, release = staged(tmp_path / "b.tar", keys[1], tmp_path / "root")
    assert {p.name for p in release.rglob("*")} == {p.name for p in bundle.rglob("*")}
    verify_dir(release, keys[1])


def test_the_same_bundle_again_reuses_the_release_untouched(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    _, release = staged(bundle, keys[1], tmp_path / "root")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in release.rglob("*")}
    _, again = staged(bundle, keys[1], tmp_path / "root")
    assert again == release
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in release.rglob("*")} == before


def test_another_bundle_with_the_same_release_label_is_refused(tmp_path: Path, keys: Keys) -> None:
    _, release = staged(make_bundle(tmp_path, keys[0]), keys[1], tmp_path / "root")
    held = (release / layout.MANIFEST).read_bytes()
    other = make_bundle(tmp_path, keys[0], name="other", payload=b"something else")
    with pytest.raises(InstallError) as caught:
        staged(other, keys[1], tmp_path / "root")
    assert caught.value.message == f"{release} holds another bundle of release 1"
    assert (release / layout.MANIFEST).read_bytes() == held


def test_a_tampered_bundle_leaves_no_release_and_no_leftovers(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    flip_byte(path_of(bundle, "model"))
    with pytest.raises(BundleCorruptError):
        staged(bundle, keys[1], tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []


def test_a_delta_needs_its_base_release_on_this_machine(tmp_path: Path, keys: Keys) -> None:
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, b"new weights" * 1000)
    with pytest.raises(InstallError) as caught:
        staged(delta, keys[1], tmp_path / "root")
    assert caught.value.message.startswith("this delta bundle needs release 1 of t (manifest ")
    assert caught.value.message.endswith("on this depot; it holds: no release")
    # A release labelled 1 that is another bundle is not the base either.
    staged(make_bundle(tmp_path, keys[0], name="impostor", payload=b"x"), keys[1], tmp_path / "r")
    with pytest.raises(InstallError, match=r"it holds: 1$"):
        staged(delta, keys[1], tmp_path / "r")
    assert not (tmp_path / "r" / "releases" / "2").exists()


def test_a_delta_becomes_a_complete_release_linked_to_its_base_release(
    tmp_path: Path, keys: Keys
) -> None:
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, b"new weights" * 1000)
    _, base_release = staged(base, keys[1], tmp_path / "root")
    manifest, release = staged(delta, keys[1], tmp_path / "root")
    for entry in read_entries(delta).files:
        placed = release / entry.path
        # The base's files are shared with the installer's own base release, and nothing with
        # a directory the operator handed in.
        if entry.from_base:
            assert placed.samefile(base_release / entry.path)
            assert not placed.samefile(base / entry.path)
        else:
            assert not placed.samefile(delta / entry.path)
    report = verify_dir(release, keys[1])
    assert (report.files, report.unchecked_from_base) == (len(manifest.files), 0)


def ansible_tar(members: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, body, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), mode
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def content_release(tmp_path: Path, members: list[tuple[str, bytes, int]]) -> tuple[Path, Manifest]:
    release = tmp_path / "releases" / "1"
    (release / "blobs").mkdir(parents=True)
    (release / "blobs" / "content").write_bytes(ansible_tar(members))
    entry = FileEntry(
        path="blobs/content", sha256="0" * 64, size=1, kind="ansible-content", component="ansible"
    )
    return release, new_manifest([entry], [])


def test_ansible_content_is_unpacked_once_beside_the_release(tmp_path: Path) -> None:
    release, manifest = content_release(
        tmp_path, [("playbooks/site.yml", b"- hosts: all\n", 0o644), ("bin/run", b"#!", 0o755)]
    )
    project = ansible_content(release, manifest)
    assert project == tmp_path / "releases" / "1.ansible"
    assert (project / "playbooks" / "site.yml").read_text() == "- hosts: all\n"
    assert stat.S_IMODE((project / "bin" / "run").stat().st_mode) == 0o755
    assert ansible_content(release, manifest) == project


def test_ansible_content_with_an_unsafe_member_is_refused(tmp_path: Path) -> None:
    release, manifest = content_release(tmp_path, [("../escape", b"x", 0o644)])
    with pytest.raises(
        InstallError, match=re.escape("ansible content member '../escape' is not a file")
    ):
        ansible_content(release, manifest)
    assert sorted(p.name for p in release.parent.iterdir()) == ["1"]


def test_a_full_bundle_links_the_running_releases_files_of_the_same_digest(
    tmp_path: Path, keys: Keys
) -> None:
    root = tmp_path / "root"
    _, running = staged(make_bundle(tmp_path, keys[0]), keys[1], root)
    (root / "current").symlink_to("releases/1")
    newer = make_bundle(tmp_path, keys[0], name="v2", payload=b"new weights", release="2")
    manifest, release = staged(newer, keys[1], root)
    held = {(e.path, e.sha256) for e in read_entries(running).files}
    shared = [e for e in manifest.files if (e.path, e.sha256) in held]
    assert shared and len(shared) < len(manifest.files)  # every file but the new weights
    for entry in manifest.files:
        placed = release / entry.path
        assert (running / entry.path).exists() == (entry in shared)
        assert entry not in shared or placed.samefile(running / entry.path)
        assert not placed.samefile(newer / entry.path)
    assert verify_dir(release, keys[1]).files == len(manifest.files)
    # Without a running release (or a packed bundle, read once as a stream) every file is copied.
    (root / "current").unlink()
    _, copied = staged(make_bundle(tmp_path, keys[0], name="v3", release="3"), keys[1], root)
    assert not inodes(copied) & inodes(running)
