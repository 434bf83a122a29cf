"""The installer's plan for the registry (registry: distribution): on the depot, its address
for every host, its storage and what the images need there, one mirror rule per upstream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from appliance.errors import InventoryError
from appliance.install.play_vars import registry_vars
from appliance.install.topology import Topology, plan
from appliance.registry import STORAGE_METADATA_BYTES

STACK = {"runtime": "llamacpp", "orchestrator": "systemd", "registry": "distribution"}
D = "sha256:" + "d" * 64
IMAGES = [
    {"ref": f"ghcr.io/org/app@{D}", "digest": D, "repository": "ghcr.io/org/app",
     "blobs": {"1" * 64: 1_000_000}},
    {"ref": f"nginx@{D}", "digest": D, "repository": "docker.io/library/nginx",
     "blobs": {"1" * 64: 1_000_000, "2" * 64: 20}},
]  # fmt: skip


def topology(hosts: Mapping[str, Mapping[str, Any]], stack: Mapping[str, Any] = STACK) -> Topology:
    return plan(
        hosts=sorted(hosts),
        depot=sorted(hosts)[0],
        gpu_nodes=[],
        host_vars=hosts,
        stack=stack,
        models=[],
        images=IMAGES,
    )


SINGLE = {"localhost": {"ansible_connection": "local"}}
LAB = {"depot-1": {"ansible_host": "198.18.10.2"}, "gpu-1": {"ansible_host": "198.18.10.11"}}


def test_no_registry_plans_none() -> None:
    planned = topology(SINGLE, {**STACK, "registry": "none"})
    assert planned.registry is None
    assert "registry" not in planned.hosts["localhost"].roles
    assert planned.as_vars()["registry"] is None


def test_single_box_registry_listens_on_loopback_and_opens_nothing() -> None:
    planned = topology(SINGLE)
    registry = planned.registry
    assert registry is not None
    assert (registry.host, registry.address, registry.port) == ("localhost", "127.0.0.1", 5000)
    # The engines come after the registry: their preflight reads its CA and pull identity.
    assert planned.hosts["localhost"].roles == (
        "preflight", "local_repo", "firewall", "registry", "container_engines",
    )  # fmt: skip
    assert planned.hosts["localhost"].firewall.service_ports == ()


def test_lab_registry_runs_on_the_depot_open_to_the_internal_networks() -> None:
    planned = topology(LAB)
    registry = planned.registry
    assert registry is not None
    assert (registry.host, registry.address) == ("depot-1", "198.18.10.2")
    assert planned.hosts["depot-1"].firewall.service_ports == (8080, 5000)
    assert "registry" not in planned.hosts["gpu-1"].roles
    assert 5000 not in planned.hosts["gpu-1"].firewall.service_ports


def test_storage_and_rules_come_from_the_images() -> None:
    registry = topology(SINGLE).registry
    assert registry is not None
    assert registry.data_dir == "/var/lib/appliance/registry"
    # The shared blob once, 5 % more, and room for the registry's metadata.
    assert registry.storage_bytes == 1_000_020 + 50_001 + STORAGE_METADATA_BYTES
    assert registry.upstreams == (
        {"host": "docker.io", "namespace": "docker.io"},
        {"host": "ghcr.io", "namespace": "ghcr.io"},
    )
    assert registry.images == tuple(IMAGES)


def test_port_and_storage_from_the_inventory() -> None:
    planned = topology(
        {"depot-1": {"ansible_host": "198.18.10.2", "registry_port": 5443,
                     "registry_data_dir": "/srv/registry"},
         "gpu-1": {"ansible_host": "198.18.10.11"}},
    )  # fmt: skip
    assert planned.registry is not None
    assert (planned.registry.port, planned.registry.data_dir) == (5443, "/srv/registry")
    assert 5443 in planned.hosts["depot-1"].firewall.service_ports


def test_registry_for_other_hosts_needs_the_depot_ipv4_address() -> None:
    with pytest.raises(InventoryError, match="runs the registry for the other hosts"):
        topology({"depot-1": {"ansible_host": "depot.lan"}, "gpu-1": {}})


def test_what_every_host_gets_to_pull_from_it() -> None:
    registry = topology(LAB).registry
    assert registry is not None
    assert registry_vars(registry) == {
        "appliance_registry_host": "198.18.10.2",
        "appliance_registry_port": 5000,
        "appliance_registry_ca_cert": "/etc/appliance/pki/ca.crt",
        "appliance_registry_pull_auth": "/etc/appliance/registry/pull-auth.json",
        "appliance_registry_upstreams": [
            {"host": "docker.io", "namespace": "docker.io"},
            {"host": "ghcr.io", "namespace": "ghcr.io"},
        ],
    }
