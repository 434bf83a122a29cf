"""The one naming rule the registry, the container engines and k3s share: an image's upstream
registry, and where the local registry keeps it."""

from __future__ import annotations

import pytest

from appliance.mirrors import (
    local_repository,
    namespace,
    split_reference,
    unmirrorable_host,
    upstream_registries,
)

D = "@sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("ref", "host", "path"),
    [
        (f"ghcr.io/acme/app{D}", "ghcr.io", "acme/app"),
        (f"ghcr.io/acme/app:1.2{D}", "ghcr.io", "acme/app"),
        (f"busybox{D}", "docker.io", "library/busybox"),
        (f"busybox:1.36{D}", "docker.io", "library/busybox"),
        (f"vllm/vllm-openai:v0.27.1{D}", "docker.io", "vllm/vllm-openai"),
        (f"docker.io/library/busybox{D}", "docker.io", "library/busybox"),
        (f"docker.io/busybox{D}", "docker.io", "library/busybox"),
        (f"localhost/app{D}", "localhost", "app"),
        (f"127.0.0.1:5000/team/app:v1{D}", "127.0.0.1:5000", "team/app"),
        (f"nvcr.io/nvidia/k8s-device-plugin:v0.17.0{D}", "nvcr.io", "nvidia/k8s-device-plugin"),
    ],
)
def test_references_split_as_containerd_reads_them(ref: str, host: str, path: str) -> None:
    assert split_reference(ref) == (host, path)


def test_the_local_registry_keeps_upstream_names_with_a_port_written_as_underscore() -> None:
    assert local_repository(f"ghcr.io/acme/app:1{D}") == "ghcr.io/acme/app"
    assert local_repository(f"busybox{D}") == "docker.io/library/busybox"
    assert local_repository(f"127.0.0.1:5000/app{D}") == "127.0.0.1_5000/app"
    assert namespace("registry.example:5000") == "registry.example_5000"


def test_each_upstream_registry_is_listed_once_sorted() -> None:
    refs = [f"ghcr.io/a/b{D}", f"busybox{D}", f"ghcr.io/c/d{D}", f"quay.io/e/f{D}"]
    assert upstream_registries(refs) == ["docker.io", "ghcr.io", "quay.io"]
    assert upstream_registries([]) == []


@pytest.mark.parametrize(
    ("ref", "refused"),
    [
        (f"ghcr.io/a/b{D}", None),
        (f"registry.example:5000/a{D}", None),
        (f"198.18.10.10:5000/a{D}", None),
        (f"Registry.Example.com/a{D}", "Registry.Example.com"),
        (f"[fd00::5]:5000/a{D}", "[fd00::5]:5000"),
        (f"-bad.example/a{D}", "-bad.example"),
    ],
)
def test_a_registry_no_mirror_rule_can_name_is_found(ref: str, refused: str | None) -> None:
    assert unmirrorable_host(ref) == refused
