"""What a bundle may hold: safe relative paths, regular files only, names safe on the hosts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.manifest import Component, FileEntry
from appliance.errors import BundleLayoutError
from tests.fixtures.bundles import new_manifest


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("blobs/sha256/abc", None),
        ("./install.sh", None),
        ("repo/", None),
        ("", "empty path"),
        (".", "empty path"),
        ("/etc/passwd", "absolute path"),
        ("../outside", "'..' in path"),
        ("blobs/../../x", "'..' in path"),
        ("a\\b", "backslash or NUL in path"),
        ("a\x00b", "backslash or NUL in path"),
        ("a//b", "path is not normalized"),
        ("a/./b", "path is not normalized"),
    ],
)
def test_unsafe_reason(path: str, reason: str | None) -> None:
    assert layout.unsafe_reason(path) == reason


def test_scan_lists_regular_files_and_names_every_link_and_special_file(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "blobs").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    (bundle / "blobs" / "a").write_text("a")
    assert layout.scan_layout(bundle) == {"manifest.json", "blobs/a"}
    (bundle / "blobs" / "inside").symlink_to("a")
    (bundle / "blobs" / "out").symlink_to("/etc/passwd")
    os.mkfifo(bundle / "pipe")
    with pytest.raises(BundleLayoutError) as caught:
        layout.scan_layout(bundle)
    assert caught.value.message == f"{bundle}: unsafe layout: 3 entries"
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("blobs/inside", "symbolic link to a; bundles hold no links"),
        ("blobs/out", "symbolic link to /etc/passwd escapes the bundle"),
        ("pipe", "special file (bundles hold regular files only)"),
    ]


def test_a_signed_manifest_may_not_name_a_trust_file_or_an_unsafe_model() -> None:
    manifest = new_manifest(
        [
            FileEntry(path="SHA256SUMS", sha256="0" * 64, size=0, kind="file", component="x"),
            FileEntry(path="blobs/sha256/0", sha256="0" * 64, size=0, kind="deb", component="x",
                      name="a/b.deb"),
        ],
        [Component(name="../evil", kind="model")],
    )  # fmt: skip
    with pytest.raises(BundleLayoutError) as caught:
        layout.check_manifest_paths(manifest, "b")
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (
            "SHA256SUMS",
            "unsafe path in manifest: the name of a trust file, which the manifest cannot list",
        ),
        ("blobs/sha256/0", "unsafe name in manifest: 'a/b.deb': a file name with '/'"),
        ("components['../evil']", "unsafe model name in manifest"),
    ]


def test_only_install_sh_is_executable() -> None:
    assert layout.file_mode("install.sh") == 0o755
    assert layout.file_mode("blobs/sha256/0") == layout.file_mode("manifest.json") == 0o644
