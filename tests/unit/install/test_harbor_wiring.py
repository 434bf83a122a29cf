"""registry: harbor, as the spec, the install checks and the installer's plan take it: the
installer pinned as a files: entry, Harbor on the depot in the registry's place (its address,
port and storage), a project per upstream registry, harbor.yml's keys Harbor's own."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance.bundle.manifest import Component, FileEntry, RepoInfo
from appliance.errors import InstallError, InventoryError
from appliance.install.checks import check_can_install
from appliance.install.topology import plan
from appliance.platform.plan import harbor_plan
from appliance.roles import play_roles, required_packages
from appliance.spec.models import HARBOR_FILE, Spec
from tests.fixtures.bundles import new_manifest
from tests.fixtures.harbor_template import TEMPLATE_KEYS

D = "sha256:" + "d" * 64
STACK = {"runtime": "llamacpp", "orchestrator": "systemd", "registry": "harbor"}
IMAGES = [
    {"ref": f"ghcr.io/org/app@{D}", "digest": D, "repository": "ghcr.io/org/app",
     "blobs": {"1" * 64: 1_000}},
    {"ref": f"nginx@{D}", "digest": D, "repository": "docker.io/library/nginx",
     "blobs": {"2" * 64: 20}},
]  # fmt: skip
INSTALLER = {"name": HARBOR_FILE, "url": "file:///srv/harbor.tgz", "sha256": "a" * 64}


def spec(**fields: object) -> Spec:
    return Spec.model_validate(
        {"version": 1, "name": "h", "release": "1", "targets": [{"os": "debian-12",
         "arch": "amd64"}], "stack": {"registry": "harbor"},
         "images": [{"ref": f"ghcr.io/org/app@{D}"}], **fields}
    )  # fmt: skip


def test_a_harbor_spec_with_its_installer_validates() -> None:
    assert spec(files=[INSTALLER]).stack.registry == "harbor"


def test_a_harbor_spec_without_its_installer_says_which_entry_is_missing() -> None:
    with pytest.raises(ValidationError) as caught:
        spec()
    message = str(caught.value)
    assert (
        "stack.registry is harbor: add Harbor's offline installer as a files: entry named "
        "'harbor-offline-installer'" in message
    )


def test_an_image_whose_upstream_has_a_port_cannot_be_a_harbor_project() -> None:
    with pytest.raises(
        ValidationError, match=r"upstream registry .registry\.example:5000. has a port"
    ):
        spec(files=[INSTALLER], images=[{"ref": f"registry.example:5000/org/app@{D}"}])


def test_install_refuses_a_harbor_bundle_without_the_installer() -> None:
    image = Component(name=f"ghcr.io/org/app@{D}", kind="image", version=D)
    bare = new_manifest([], [image], stack={**STACK, "object_store": "filesystem"})
    with pytest.raises(InstallError) as caught:
        check_can_install(bare)
    assert str(caught.value) == (
        "bundle t 1: stack.registry is harbor but the bundle carries no file named "
        "'harbor-offline-installer' (Harbor's offline installer, which the harbor role runs)"
    )
    installer = FileEntry(path="blobs/sha256/" + "b" * 64, sha256="b" * 64, size=1, kind="file",
                          component=HARBOR_FILE)  # fmt: skip
    debs = set(required_packages(STACK, serves_models=False))
    carried = new_manifest(
        [installer],
        [image, Component(name=HARBOR_FILE, kind="file", version="v2.15.2")]
        + [Component(name=f"{d}:amd64", kind="deb", version="1") for d in sorted(debs)],
        stack={**STACK, "object_store": "filesystem"},
        repo=RepoInfo(path="repo", key="repo/key.gpg", fingerprint="F" * 40),
    )
    check_can_install(carried)


def test_the_bundle_carries_docker_compose_and_skopeo_for_harbor() -> None:
    needed = required_packages(STACK, serves_models=False)
    assert needed["docker.io"] == ["harbor"] and needed["skopeo"] == ["harbor"]
    assert "docker-registry" not in needed  # the registry role's, not Harbor's
    assert "registry" not in play_roles(STACK, serves_models=False)


def _plan(hosts: dict[str, dict[str, str]]) -> object:
    return plan(hosts=sorted(hosts), depot=sorted(hosts)[0], gpu_nodes=[], host_vars=hosts,
                stack=STACK, models=[], images=IMAGES)  # fmt: skip


def test_harbor_runs_on_the_depot_where_the_registry_would() -> None:
    hosts = {"depot-1": {"ansible_host": "198.18.10.2"}, "gpu-1": {"ansible_host": "198.18.10.11"}}
    planned = plan(hosts=sorted(hosts), depot="depot-1", gpu_nodes=[], host_vars=hosts,
                   stack=STACK, models=[], images=IMAGES)  # fmt: skip
    assert planned.hosts["depot-1"].roles == (
        "preflight", "local_repo", "repo_server", "firewall", "harbor", "container_engines",
    )  # fmt: skip
    assert "harbor" not in planned.hosts["gpu-1"].roles
    assert planned.hosts["depot-1"].firewall.service_ports == (8080, 5000)
    harbor = harbor_plan(planned, [str(i["ref"]) for i in IMAGES])
    # Where every engine pulls from, and the storage preflight sizes: outside the releases.
    assert harbor["address"] == "198.18.10.2:5000"
    assert harbor["harbor_yml"]["hostname"] == "198.18.10.2"
    assert harbor["harbor_yml"]["https"]["port"] == 5000
    assert harbor["data_volume"] == "/var/lib/appliance/registry"
    assert not harbor["data_volume"].startswith("/opt/appliance")
    # One project per upstream registry, named as the registry's layout names it.
    assert harbor["projects"] == ["docker.io", "ghcr.io"]
    assert "IP:198.18.10.2" in harbor["certificate_names"]


def test_a_single_box_harbor_listens_where_the_engines_pull() -> None:
    planned = plan(hosts=["localhost"], depot="localhost", gpu_nodes=[],
                   host_vars={"localhost": {"ansible_connection": "local"}}, stack=STACK,
                   models=[], images=IMAGES)  # fmt: skip
    harbor = harbor_plan(planned, [str(i["ref"]) for i in IMAGES])
    assert harbor["address"] == "127.0.0.1:5000"
    assert {"IP:127.0.0.1", "DNS:localhost"} <= set(harbor["certificate_names"])
    keys: set[str] = set()
    pending = [("", harbor["harbor_yml"])]
    while pending:
        prefix, tree = pending.pop()
        for key, value in tree.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                pending.append((prefix + key + ".", value))
    assert keys <= TEMPLATE_KEYS, keys - TEMPLATE_KEYS


def test_the_harbor_host_counts_docker_s_pool_inside_and_no_other_host_does() -> None:
    hosts = {"depot-1": {"ansible_host": "198.18.10.2"}, "gpu-1": {"ansible_host": "198.18.10.11"}}
    planned = plan(hosts=sorted(hosts), depot="depot-1", gpu_nodes=[], host_vars=hosts,
                   stack=STACK, models=[], images=IMAGES)  # fmt: skip
    # The role's default pool, which it writes into Docker's daemon.json.
    assert planned.hosts["depot-1"].firewall.cluster_cidrs == ("172.30.0.0/16",)
    assert planned.hosts["gpu-1"].firewall.cluster_cidrs == ()
    # A site's own pool is taken as given, and one that is no network is refused by name.
    mine = {**hosts, "depot-1": {**hosts["depot-1"], "harbor_docker_address_pool": "10.99.0.0/16"}}
    planned = plan(hosts=sorted(mine), depot="depot-1", gpu_nodes=[], host_vars=mine,
                   stack=STACK, models=[], images=IMAGES)  # fmt: skip
    assert planned.hosts["depot-1"].firewall.cluster_cidrs == ("10.99.0.0/16",)
    for pool, why in (
        ("10.0.0.0/8 }", "not an IPv4 network"),
        ("0.0.0.0/0", "must be private"),
        ("10.0.0.0/8", "no wider than a /12"),
        ("8.8.0.0/16", "must be private"),
    ):
        bad = {**hosts, "depot-1": {**hosts["depot-1"], "harbor_docker_address_pool": pool}}
        with pytest.raises(InventoryError, match=rf"depot-1: harbor_docker_address_pool .*{why}"):
            plan(hosts=sorted(bad), depot="depot-1", gpu_nodes=[], host_vars=bad, stack=STACK,
                 models=[], images=IMAGES)  # fmt: skip
