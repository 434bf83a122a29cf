"""What was verified is what gets installed: a delta's release shares an inode with its base
release only where nobody but the installer can change that file; otherwise it gets a copy,
hashed as it is made."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.filecheck import only_ours
from appliance.bundle.verify import open_bundle, verify_dir
from appliance.errors import BundleCorruptError
from tests.fixtures.bundles import make_bundle, make_delta, path_of, read_entries

Keys = tuple[Path, Path, Path]
PAYLOAD = b"new in the delta\n" * 1000


def group_writable_file(base: Path) -> Path:
    target = path_of(base, "deb")
    target.chmod(0o664)
    return target


def someone_elses_file(base: Path) -> Path:
    target = path_of(base, "deb")
    os.chown(target, 65534, 65534)
    return target


def world_writable_directory(base: Path) -> Path:
    (base / layout.BLOBS).chmod(0o777)
    return path_of(base, "deb")


def world_writable_parent(base: Path) -> Path:
    base.parent.chmod(0o777)
    return path_of(base, "deb")


UNSAFE: dict[str, Callable[[Path], Path]] = {
    "a group-writable file": group_writable_file,
    "a file owned by another user": someone_elses_file,
    "a world-writable directory on the way": world_writable_directory,
    "a world-writable releases directory": world_writable_parent,
}


def staged(tmp_path: Path, keys: Keys) -> tuple[Path, Path]:
    releases = tmp_path / "releases"
    releases.mkdir(mode=0o755)
    base = make_bundle(releases, keys[0], name="1")
    base.chmod(0o755)
    return base, make_delta(tmp_path, keys[0], base, PAYLOAD)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("make_unsafe", UNSAFE.values(), ids=UNSAFE.keys())
def test_a_base_file_someone_else_can_change_is_copied_not_linked(
    tmp_path: Path, keys: Keys, make_unsafe: Callable[[Path], Path]
) -> None:
    base, delta = staged(tmp_path, keys)
    source = make_unsafe(base)
    relative = source.relative_to(base).as_posix()
    assert not only_ours(base, relative)
    with open_bundle(delta, keys[1]) as opened:
        opened.extract(tmp_path / "2", installed_base=lambda _ref: base)
    assert not (tmp_path / "2" / relative).samefile(source)
    assert (tmp_path / "2" / relative).read_bytes() == source.read_bytes()
    # A file beside it is shared only if nobody else can change it either (a directory on
    # the way that others may write makes every file below it theirs too).
    beside = path_of(base, "model")
    ours = only_ours(base, beside.relative_to(base).as_posix())
    assert ours == (make_unsafe in (group_writable_file, someone_elses_file))
    assert (tmp_path / "2" / beside.relative_to(base)).samefile(beside) == ours
    verify_dir(tmp_path / "2", keys[1])


def test_a_base_file_changed_by_someone_else_is_caught_by_its_hash(
    tmp_path: Path, keys: Keys
) -> None:
    base, delta = staged(tmp_path, keys)
    source = group_writable_file(base)
    source.write_bytes(source.read_bytes().replace(b"deb", b"DEB"))
    relative = source.relative_to(base).as_posix()
    with (
        open_bundle(delta, keys[1]) as opened,
        pytest.raises(BundleCorruptError) as caught,
    ):
        opened.extract(tmp_path / "2", installed_base=lambda _ref: base)
    assert [p.path for p in caught.value.problems] == [relative]
    assert not (tmp_path / "2").exists()


def test_a_file_replaced_by_a_link_is_not_ours(tmp_path: Path, keys: Keys) -> None:
    base, _delta = staged(tmp_path, keys)
    entry = next(e for e in read_entries(base).files if e.kind == "model")
    (base / entry.path).unlink()
    (base / entry.path).symlink_to("/etc/passwd")
    assert not only_ours(base, entry.path)
    assert not only_ours(base, "blobs/sha256/missing")
