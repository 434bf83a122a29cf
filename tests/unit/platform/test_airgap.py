"""k3s's airgap tarball: its image list, read from archives laid out as ``docker image save``
writes them (tests/fixtures/k3s_cluster.airgap_tarball), compressed with zstd as k3s ships
them, and refused when the file is no image archive."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import BundleCorruptError
from appliance.platform.airgap import normalise, read_airgap_images
from tests.fixtures.k3s_cluster import airgap_tarball, write_tar

MANIFEST = "sha256:" + "aa" * 32
CONFIG = "bb" * 32
PAUSE = ("docker.io/rancher/mirrored-pause:3.6", MANIFEST, CONFIG)


def test_a_docker_25_archive_gives_each_image_its_manifest_and_config_digests(
    tmp_path: Path,
) -> None:
    coredns = (
        "docker.io/rancher/mirrored-coredns-coredns:1.12.3",
        "sha256:" + "cc" * 32,
        "dd" * 32,
    )
    found = read_airgap_images(airgap_tarball(tmp_path / "k3s.tar.zst", [PAUSE, coredns]))
    assert [image.ref for image in found] == [coredns[0], PAUSE[0]]
    assert found[1].digests == {MANIFEST, f"sha256:{CONFIG}"}
    # Uncompressed works too (k3s also accepts .tar).
    plain = read_airgap_images(airgap_tarball(tmp_path / "k3s.tar", [PAUSE], compress=False))
    assert plain == found[1:]


def test_an_older_archive_names_its_images_by_config_digest(tmp_path: Path) -> None:
    busybox = ("docker.io/library/busybox:1.36", MANIFEST, CONFIG)
    (image,) = read_airgap_images(airgap_tarball(tmp_path / "old.tar.zst", [busybox], legacy=True))
    assert image.ref == "docker.io/library/busybox:1.36"
    # No index: containerd computes the manifest itself; the config digest is what is known.
    assert image.digests == {f"sha256:{CONFIG}"}


def test_names_are_normalised_as_containerd_names_them() -> None:
    assert normalise("rancher/klipper-helm:v0.9") == "docker.io/rancher/klipper-helm:v0.9"
    assert normalise("busybox:1") == "docker.io/library/busybox:1"
    assert normalise("ghcr.io/a/b:1") == "ghcr.io/a/b:1"
    assert normalise("localhost:5000/a:1") == "localhost:5000/a:1"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"README": b"not images"}, "no index.json or manifest.json"),
        ({"index.json": b"{not json"}, "cannot read the images"),
        ({"manifest.json": b"x" * (5 * 1024 * 1024)}, "not an image archive's index"),
    ],
)
def test_a_file_that_is_no_image_archive_is_refused(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    with pytest.raises(BundleCorruptError, match=message):
        read_airgap_images(write_tar(tmp_path / "bad.tar.zst", members))


def test_truncated_zstd_is_refused(tmp_path: Path) -> None:
    path = airgap_tarball(tmp_path / "k3s.tar.zst", [PAUSE])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BundleCorruptError, match="cannot read the images"):
        read_airgap_images(path)
