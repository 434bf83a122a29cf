"""The registry's layout (one namespace per upstream registry, upstream names kept) and the
storage the bundle's images need: the code the registry role, the installer and verify share."""

from __future__ import annotations

import pytest

from appliance.bundle.manifest import Component, FileEntry
from appliance.registry import (
    STORAGE_METADATA_BYTES,
    RegistryError,
    images,
    namespace,
    repository,
    split_reference,
    storage_bytes,
    upstreams,
)
from tests.fixtures.bundles import new_manifest

D = "sha256:" + "d" * 64


@pytest.mark.parametrize(
    ("ref", "host", "path"),
    [
        (f"ghcr.io/org/app:1.2@{D}", "ghcr.io", "org/app"),
        (f"nvcr.io/nvidia/k8s-device-plugin@{D}", "nvcr.io", "nvidia/k8s-device-plugin"),
        # Docker Hub's short names, normalised as docker and containerd do.
        (f"nginx@{D}", "docker.io", "library/nginx"),
        (f"vllm/vllm-openai:v0.9@{D}", "docker.io", "vllm/vllm-openai"),
        (f"docker.io/library/busybox@{D}", "docker.io", "library/busybox"),
        (f"index.docker.io/library/busybox@{D}", "docker.io", "library/busybox"),
        (f"127.0.0.1:5000/team/app:1@{D}", "127.0.0.1:5000", "team/app"),
        (f"localhost/app@{D}", "localhost", "app"),
    ],
)
def test_a_reference_splits_into_upstream_host_path_and_digest(
    ref: str, host: str, path: str
) -> None:
    assert split_reference(ref) == (host, path, D)


@pytest.mark.parametrize(
    ("ref", "inside"),
    [
        (f"ghcr.io/org/app:1.2@{D}", "ghcr.io/org/app"),
        (f"nginx@{D}", "docker.io/library/nginx"),
        (f"127.0.0.1:5000/team/app:1@{D}", "127.0.0.1_5000/team/app"),
        (f"Registry.Example.COM:443/team/app@{D}", "registry.example.com_443/team/app"),
    ],
)
def test_an_image_keeps_its_upstream_name_inside_the_registry(ref: str, inside: str) -> None:
    assert repository(ref) == inside


def test_a_host_no_repository_name_can_carry_has_no_mirror_rule() -> None:
    with pytest.raises(RegistryError, match=r"upstream registry '\[fd00::1\]:5000' cannot be"):
        namespace("[fd00::1]:5000")


def test_an_unpinned_reference_is_refused() -> None:
    with pytest.raises(RegistryError, match="not pinned by @sha256"):
        split_reference("ghcr.io/org/app:1")


def test_one_mirror_rule_per_upstream_registry() -> None:
    refs = [f"ghcr.io/a/x@{D}", f"nginx@{D}", f"ghcr.io/b/y:2@{D}", f"127.0.0.1:5000/z@{D}"]
    assert upstreams(refs) == [
        {"host": "127.0.0.1:5000", "namespace": "127.0.0.1_5000"},
        {"host": "docker.io", "namespace": "docker.io"},
        {"host": "ghcr.io", "namespace": "ghcr.io"},
    ]


def _blob(hexdigest: str, size: int, ref: str) -> FileEntry:
    return FileEntry(
        path=f"blobs/sha256/{hexdigest}", sha256=hexdigest, size=size, kind="image", component=ref
    )


A, B = f"ghcr.io/org/a:1@{D}", f"ghcr.io/org/b:1@sha256:{'e' * 64}"
MANIFEST = new_manifest(
    [
        _blob("1" * 64, 1000, A),  # a's manifest
        _blob("2" * 64, 300_000_000, A),  # the base layer both share
        _blob("3" * 64, 2_000, B),  # b's manifest
        _blob("4" * 64, 50_000, B),  # b's own layer
    ],
    [
        Component(name=A, kind="image", version=D, source=A),
        Component(name=B, kind="image", version="sha256:" + "1" * 64, source=B),
        Component(name="jq:amd64", kind="deb", version="1.6"),
    ],
)


def test_the_manifests_images_with_their_repository_digest_and_blobs() -> None:
    assert images(MANIFEST) == [
        {"ref": A, "digest": D, "repository": "ghcr.io/org/a",
         "blobs": {"1" * 64: 1000, "2" * 64: 300_000_000}},
        # The digest the bundle holds (a platform's manifest when the spec pinned an index).
        {"ref": B, "digest": "sha256:" + "1" * 64, "repository": "ghcr.io/org/b",
         "blobs": {"3" * 64: 2_000, "4" * 64: 50_000}},
    ]  # fmt: skip


def test_storage_counts_each_blob_once_with_a_margin() -> None:
    found = images(MANIFEST)
    found[1]["blobs"]["2" * 64] = 300_000_000  # b shares a's base layer
    total = 1000 + 300_000_000 + 2_000 + 50_000
    assert storage_bytes(found) == total + 15_002_650 + STORAGE_METADATA_BYTES
    assert storage_bytes([]) == STORAGE_METADATA_BYTES
