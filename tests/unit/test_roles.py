"""What the roles declare, read without Ansible: their OS packages, and which run for a stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.roles import ROLES_DIR, play_roles, required_packages, role_packages

ROLES = sorted(path.name for path in ROLES_DIR.iterdir() if (path / "tasks").is_dir())


@pytest.mark.parametrize("role", ROLES)
def test_every_role_declares_its_packages_as_a_literal_list(role: str) -> None:
    packages = role_packages(role)
    assert all(name and name == name.strip() for name in packages)


def test_the_roles_that_install_packages_declare_them() -> None:
    assert role_packages("firewall") == ("nftables",)
    assert "python3-apt" in role_packages("local_repo")
    assert "nginx-light" in role_packages("local_repo")
    assert role_packages("runtime_llamacpp") == ("libgomp1",)


def test_a_bundle_without_models_needs_no_runtime() -> None:
    assert play_roles({"runtime": "llamacpp"}, serves_models=False) == (
        "preflight",
        "local_repo",
        "firewall",
    )
    assert "libgomp1" not in required_packages({"runtime": "llamacpp"}, serves_models=False)


def test_packages_name_the_roles_that_need_them() -> None:
    needed = required_packages({"runtime": "llamacpp"}, serves_models=True)
    assert needed["libgomp1"] == ["runtime_llamacpp"]
    assert needed["nftables"] == ["firewall"]
    assert "zstd" not in needed
    assert required_packages({"runtime": "ollama"}, serves_models=True)["zstd"] == [
        "runtime_ollama"
    ]


def test_an_s3_store_brings_the_site_ca_and_its_openssl() -> None:
    stack = {"runtime": "llamacpp", "object_store": "minio"}
    assert play_roles(stack, serves_models=False) == (
        "preflight",
        "local_repo",
        "firewall",
        "site_ca",
        "object_store",
    )
    assert required_packages(stack, serves_models=False)["openssl"] == ["site_ca"]
    assert "openssl" not in required_packages({"runtime": "llamacpp"}, serves_models=False)


def test_the_gateway_brings_the_site_ca_for_its_https() -> None:
    # gateway_tls defaults to site_ca: a bundle that serves models carries openssl for it, once.
    roles = play_roles({"runtime": "llamacpp"}, serves_models=True)
    assert roles[-3:] == ("runtime_llamacpp", "site_ca", "gateway")
    stack = {"runtime": "llamacpp", "object_store": "minio"}
    assert play_roles(stack, serves_models=True).count("site_ca") == 1
    assert required_packages({"runtime": "llamacpp"}, serves_models=True)["openssl"] == ["site_ca"]


def test_a_templated_declaration_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = tmp_path / "roles" / "odd" / "defaults"
    role.mkdir(parents=True)
    (role / "main.yml").write_text('odd_packages: "{{ some_list }}"\n')
    monkeypatch.setattr("appliance.roles.ROLES_DIR", tmp_path / "roles")
    with pytest.raises(ValueError, match="odd_packages must be a literal list"):
        role_packages("odd")


def test_gpu_nodes_add_the_driver_roles_and_their_packages() -> None:
    roles = play_roles({"runtime": "vllm"}, serves_models=True, gpu=True)
    assert roles[:5] == ("preflight", "local_repo", "firewall", "gpu_facts", "nvidia_driver")
    assert "nvidia_container_toolkit" not in roles
    needed = required_packages({"runtime": "vllm"}, serves_models=True, gpu=True)
    assert needed["initramfs-tools"] == ["nvidia_driver"]
    assert needed["mokutil"] == ["nvidia_driver"]
    assert "initramfs-tools" not in required_packages({"runtime": "vllm"}, serves_models=True)
    toolkit = play_roles({"runtime": "vllm"}, serves_models=True, gpu=True, toolkit=True)
    assert toolkit.index("nvidia_container_toolkit") == toolkit.index("nvidia_driver") + 1


def test_a_registry_brings_the_container_engines_and_their_containerd() -> None:
    stack = {"runtime": "llamacpp", "registry": "distribution", "orchestrator": "systemd"}
    assert play_roles(stack, serves_models=False)[-1] == "container_engines"
    assert required_packages(stack, serves_models=False)["containerd"] == ["container_engines"]
    # k3s's own containerd takes its mirrors from registries.yaml; none at all without a registry.
    for other in ({**stack, "orchestrator": "k3s"}, {**stack, "registry": "none"}):
        assert "container_engines" not in play_roles(other, serves_models=False)


def test_the_platform_roles_join_the_play_when_the_stack_names_them() -> None:
    stack = {"registry": "harbor", "object_store": "minio", "orchestrator": "k3s"}
    roles = play_roles(stack, serves_models=True)
    assert roles.count("site_ca") == 1
    assert roles.index("harbor") < roles.index("k3s") < roles.index("artifacts")
    assert "docker.io" in required_packages(stack, serves_models=False)
    assert "harbor" not in play_roles({"registry": "none"}, serves_models=True)
