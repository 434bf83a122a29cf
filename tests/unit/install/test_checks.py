"""install's checks on a bundle before any host changes: stack and the roles' packages."""

from __future__ import annotations

import pytest

from appliance.bundle.manifest import Component, FileEntry, Manifest, RepoInfo
from appliance.errors import InstallError
from appliance.install.checks import check_can_install
from tests.fixtures.bundles import new_manifest

SYSTEMD = {"registry": "none", "object_store": "filesystem", "orchestrator": "systemd"}
MODEL = FileEntry(
    path="blobs/sha256/" + "a" * 64, sha256="a" * 64, size=1, kind="model", component="tiny",
    name="tiny.gguf",
)  # fmt: skip


def manifest(
    debs: list[str], *, runtime: str = "llamacpp", models: bool = True, repo: bool = True
) -> Manifest:
    components = [Component(name=f"{d}:amd64", kind="deb", version="1") for d in debs]
    if models:
        components.append(Component(name="tiny", kind="model", version="gguf"))
    return new_manifest(
        [MODEL] if models else [],
        components,
        stack={**SYSTEMD, "runtime": runtime},
        repo=RepoInfo(path="repo", key="repo/key.gpg", fingerprint="F" * 40) if repo else None,
    )


ALL = ["nftables", "python3-apt", "nginx-light", "libgomp1", "jq", "openssl"]


def test_a_bundle_with_every_role_package_passes() -> None:
    check_can_install(manifest(ALL))


def test_a_missing_role_package_is_named_with_its_role() -> None:
    with pytest.raises(InstallError) as caught:
        check_can_install(manifest(["jq", "nftables", "nginx-light"]))
    message = caught.value.message
    assert "lacks OS packages the roles install" in message
    assert "python3-apt (required by role local_repo)" in message
    assert "libgomp1 (required by role runtime_llamacpp)" in message
    assert "Nothing was changed" in caught.value.hint


def test_without_models_the_runtime_packages_are_not_needed() -> None:
    check_can_install(manifest(["nftables", "python3-apt", "nginx-light"], models=False))


def test_a_bundle_without_a_repository_is_refused_before_any_change() -> None:
    with pytest.raises(InstallError, match="carries no OS packages, but the roles install"):
        check_can_install(manifest([], repo=False, models=False))


def test_a_stack_this_release_cannot_install_is_refused() -> None:
    with pytest.raises(InstallError, match=r"stack.runtime is 'tgi', which this release cannot"):
        check_can_install(manifest(ALL, runtime="tgi"))


def test_a_minio_stack_without_the_server_binary_is_refused() -> None:
    bare = new_manifest([], [], stack={**SYSTEMD, "object_store": "minio"})
    with pytest.raises(InstallError) as caught:
        check_can_install(bare)
    assert str(caught.value) == (
        "bundle t 1: stack.object_store is minio but the bundle carries no file named 'minio' "
        "(the server binary the object_store role installs)"
    )
    binary = FileEntry(
        path="blobs/sha256/" + "b" * 64, sha256="b" * 64, size=1, kind="file", component="minio"
    )
    debs = [*ALL, "openssl"]  # the site CA's, which the minio stack brings
    carried = new_manifest(
        [binary],
        [Component(name="minio", kind="file", version="RELEASE.2025-09-07T16-13-09Z")]
        + [Component(name=f"{d}:amd64", kind="deb", version="1") for d in debs],
        stack={**SYSTEMD, "object_store": "minio"},
        repo=RepoInfo(path="repo", key="repo/key.gpg", fingerprint="F" * 40),
    )
    check_can_install(carried)
