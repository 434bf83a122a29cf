"""Site models in the installer's topology: served beside the bundle's, on the depot, whose
store holds them; planned onto another host, they stop install before anything changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.manifest import Component, FileEntry
from appliance.errors import InventoryError
from appliance.install.inventory import Inventory
from appliance.install.play_vars import plan_topology
from tests.fixtures.bundles import new_manifest

SITE = [{"name": "support-v3", "format": "gguf", "origin": "site", "files": []}]


def manifest() -> Any:
    entry = FileEntry(
        path="blobs/sha256/" + "a" * 64, name="tiny.gguf", sha256="a" * 64, size=1,
        kind="model", component="tiny-llama",
    )  # fmt: skip
    return new_manifest(
        [entry], [Component(name="tiny-llama", kind="model")], stack={"runtime": "llamacpp"}
    )


def inventory(hosts: dict[str, dict[str, Any]], gpu_nodes: tuple[str, ...]) -> Inventory:
    return Inventory(
        path=Path("hosts.yml"), depot="depot-1", hosts=sorted(hosts), depot_is_local=True,
        local_hosts=frozenset({"depot-1"}), depot_vars=hosts["depot-1"], gpu_nodes=gpu_nodes,
        host_vars=hosts,
    )  # fmt: skip


def test_the_depot_serves_site_models_beside_the_bundles() -> None:
    topology = plan_topology(
        inventory({"depot-1": {"ansible_host": "198.18.10.2"}}, ("depot-1",)), manifest(), SITE
    )
    runtime = topology.hosts["depot-1"].runtime
    assert runtime is not None
    # After the bundle's: adding a site model moves no bundle model to another port.
    assert runtime.ports == {"tiny-llama": 8081, "support-v3": 8082}


def test_a_site_model_planned_on_another_host_is_refused() -> None:
    hosts = {
        "depot-1": {"ansible_host": "198.18.10.2"},
        "gpu-1": {"ansible_host": "198.18.10.11"},
    }
    with pytest.raises(InventoryError) as refused:
        plan_topology(inventory(hosts, ("gpu-1",)), manifest(), SITE)
    assert refused.value.message == (
        "host gpu-1 would serve the site model(s) support-v3, but the filesystem store that "
        "holds site models is on the depot alone"
    )


def test_with_the_s3_store_any_gpu_node_serves_site_models() -> None:
    hosts = {
        "depot-1": {"ansible_host": "198.18.10.2"},
        "gpu-1": {"ansible_host": "198.18.10.11"},
    }
    minio = manifest().model_copy(
        update={"stack": {"runtime": "llamacpp", "object_store": "minio"}}
    )
    topology = plan_topology(inventory(hosts, ("gpu-1",)), minio, SITE)
    runtime = topology.hosts["gpu-1"].runtime
    assert runtime is not None
    assert runtime.ports == {"tiny-llama": 8081, "support-v3": 8082}
    assert topology.hosts["depot-1"].runtime is None
    assert topology.object_store is not None and topology.object_store.host == "depot-1"
    # The same plan with the filesystem store is refused (above): the objects are the depot's.
    with pytest.raises(InventoryError, match="filesystem store that holds site models"):
        plan_topology(inventory(hosts, ("gpu-1",)), manifest(), SITE)
