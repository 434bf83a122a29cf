"""The installer's topology: who runs what, on which ports, open to whom."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from appliance.errors import InventoryError
from appliance.install.topology import Topology, plan

LLAMACPP = {"runtime": "llamacpp", "orchestrator": "systemd"}
GGUF = [{"name": "alpha", "format": "gguf"}, {"name": "beta", "format": "gguf"}]


def lab(
    host_vars: Mapping[str, Mapping[str, Any]] | None = None,
    models: Sequence[Mapping[str, Any]] = GGUF,
    stack: Mapping[str, Any] = LLAMACPP,
) -> Topology:
    """A depot and two GPU nodes, each node serving one model unless told otherwise."""
    base: dict[str, dict[str, Any]] = {
        "depot-1": {"ansible_host": "198.18.10.2"},
        "gpu-1": {"ansible_host": "198.18.10.11", "runtime_llamacpp_models": ["alpha"]},
        "gpu-2": {"ansible_host": "198.18.10.12", "runtime_llamacpp_models": ["beta"]},
    }
    for host, extra in (host_vars or {}).items():
        base.setdefault(host, {}).update(extra)
    return plan(
        hosts=sorted(base),
        depot="depot-1",
        gpu_nodes=["gpu-1", "gpu-2"],
        host_vars=base,
        stack=stack,
        models=models,
    )


def single_box(models: Sequence[Mapping[str, Any]] = GGUF, **stack: str) -> Topology:
    return plan(
        hosts=["localhost"],
        depot="localhost",
        gpu_nodes=["localhost"],
        host_vars={"localhost": {"ansible_connection": "local"}},
        stack={**LLAMACPP, **stack},
        models=models,
    )


def test_single_box_serves_on_loopback_and_opens_only_the_gateway() -> None:
    topology = single_box()
    box = topology.hosts["localhost"]
    assert box.roles == ("preflight", "local_repo", "firewall", "runtime_llamacpp", "gateway")
    assert box.runtime is not None
    assert box.runtime.listen_address == "127.0.0.1"
    assert box.runtime.ports == {"alpha": 8081, "beta": 8082}
    assert box.firewall.service_ports == (8000,)  # the gateway; no repository server
    assert box.firewall.private_ports == ()
    assert topology.repo_url is None
    assert topology.gateway_host == "localhost"


def test_without_models_no_runtime_and_no_gateway() -> None:
    topology = single_box(models=[])
    assert topology.hosts["localhost"].roles == ("preflight", "local_repo", "firewall")
    assert topology.hosts["localhost"].firewall.service_ports == ()
    assert topology.gateway_host is None
    assert topology.groups() == {
        "appliance_firewall": ["localhost"],
        "appliance_local_repo": ["localhost"],
        "appliance_preflight": ["localhost"],
    }


def test_lab_depot_serves_the_repository_and_the_gateway() -> None:
    topology = lab()
    depot = topology.hosts["depot-1"]
    assert depot.depot
    assert depot.roles == ("preflight", "local_repo", "repo_server", "firewall", "gateway")
    assert depot.firewall.service_ports == (8080, 8000)
    assert topology.repo_url == "http://198.18.10.2:8080"
    # HTTPS, as the gateway serves by default (gateway_tls: site_ca).
    assert topology.gateway_url == "https://198.18.10.2:8000"


@pytest.mark.parametrize(
    ("tls", "url"),
    [("off", "http://198.18.10.2:8443"), ("files", "https://198.18.10.2:8443")],
)
def test_the_gateway_url_follows_gateway_tls(tls: str, url: str) -> None:
    topology = lab({"depot-1": {"gateway_tls": tls, "gateway_port": 8443}})
    assert topology.gateway_url == url


def test_lab_runtime_ports_are_open_to_the_gateway_host_alone() -> None:
    topology = lab({"gpu-2": {"runtime_llamacpp_port_base": 8091}})
    one, two = topology.hosts["gpu-1"], topology.hosts["gpu-2"]
    assert one.runtime is not None and two.runtime is not None
    assert (one.runtime.models, one.runtime.ports) == (("alpha",), {"alpha": 8081})
    assert (two.runtime.models, two.runtime.ports) == (("beta",), {"beta": 8091})
    assert one.runtime.listen_address == "198.18.10.11"
    assert one.firewall == two.firewall.__class__((), (8081,), ("198.18.10.2",))
    assert two.firewall.private_ports == (8091,)
    assert one.firewall.service_ports == ()


def test_groups_list_each_role_with_its_hosts() -> None:
    assert lab().groups() == {
        "appliance_firewall": ["depot-1", "gpu-1", "gpu-2"],
        "appliance_gateway": ["depot-1"],
        "appliance_local_repo": ["depot-1", "gpu-1", "gpu-2"],
        "appliance_preflight": ["depot-1", "gpu-1", "gpu-2"],
        "appliance_repo_server": ["depot-1"],
        "appliance_runtime_llamacpp": ["gpu-1", "gpu-2"],
    }


def test_gateway_on_a_gpu_node_serves_its_runtime_on_loopback() -> None:
    topology = lab({"depot-1": {"appliance_gateway_host": "gpu-1"}})
    node = topology.hosts["gpu-1"]
    assert "gateway" in node.roles
    assert node.runtime is not None and node.runtime.listen_address == "127.0.0.1"
    assert node.firewall.service_ports == (8000,)
    assert node.firewall.private_ports == ()
    assert topology.hosts["gpu-2"].firewall.private_sources == ("198.18.10.11",)
    assert "gateway" not in topology.hosts["depot-1"].roles


def test_ollama_serves_every_model_on_one_port() -> None:
    models = [{"name": "tiny", "format": "ollama"}, {"name": "small", "format": "ollama"}]
    topology = single_box(models=models, runtime="ollama")
    runtime = topology.hosts["localhost"].runtime
    assert runtime is not None
    assert runtime.ports == {"tiny": 11434, "small": 11434}
    assert topology.hosts["localhost"].roles[-2:] == ("runtime_ollama", "gateway")


def test_each_runtime_serves_only_its_formats() -> None:
    models = [
        {"name": "gguf-one", "format": "gguf"},
        {"name": "hub-one", "format": None, "source": "hf://org/repo"},
        {"name": "local-st", "format": "safetensors"},
        {"name": "ollama-one", "format": "ollama", "source": "ollama://library/x:1"},
    ]
    served = {
        runtime: single_box(models=models, runtime=runtime).hosts["localhost"].runtime
        for runtime in ("llamacpp", "vllm", "ollama")
    }
    assert {name: r.models for name, r in served.items() if r is not None} == {
        "llamacpp": ("gguf-one",),
        "vllm": ("hub-one", "local-st"),
        "ollama": ("ollama-one",),
    }


def test_default_route_is_required_only_for_k3s() -> None:
    assert single_box().require_default_route is False
    assert single_box(orchestrator="k3s").require_default_route is True


@pytest.mark.parametrize(
    ("host_vars", "message"),
    [
        (
            {"gpu-1": {"runtime_llamacpp_models": ["gamma"]}},
            "host gpu-1: runtime_llamacpp_models names gamma, which the bundle has no "
            "llamacpp-servable model of (it has: alpha, beta)",
        ),
        (
            {"gpu-2": {"runtime_llamacpp_models": ["alpha"]}},
            "model alpha is served by gpu-1 and gpu-2; the gateway routes each model to one "
            "runtime",
        ),
        (
            {"gpu-1": {"runtime_llamacpp_models": "alpha"}},
            "host gpu-1: runtime_llamacpp_models must be a list of model names",
        ),
        (
            {"gpu-1": {"runtime_llamacpp_port_base": "{{ base }}"}},
            "host gpu-1: runtime_llamacpp_port_base is a template ('{{ base }}')",
        ),
        (
            {"gpu-1": {"runtime_llamacpp_port_base": 70000}},
            "host gpu-1: runtime_llamacpp_port_base is 70000, not a TCP port",
        ),
        (
            {"gpu-1": {"runtime_llamacpp_port_base": 65535}},
            "host gpu-1: runtime_llamacpp_port_base 65535 leaves no port for each of its 1 models",
        ),
        (
            {"depot-1": {"ansible_host": "depot.lab.internal"}},
            "host depot-1 runs the gateway, and gpu-1, gpu-2 open their runtime ports to it "
            "alone, but its address 'depot.lab.internal' is not an IPv4 address",
        ),
        (
            {"depot-1": {"appliance_gateway_host": "gpu-9"}},
            "appliance_gateway_host names gpu-9, which is not in the inventory",
        ),
    ],
    ids=[
        "unknown-model",
        "model-twice",
        "models-not-a-list",
        "templated-port",
        "port-out-of-range",
        "ports-run-out",
        "gateway-without-ipv4",
        "gateway-not-a-host",
    ],
)
def test_an_unworkable_inventory_is_refused_naming_host_and_variable(
    host_vars: Mapping[str, Mapping[str, Any]], message: str
) -> None:
    with pytest.raises(InventoryError) as caught:
        lab(host_vars)
    assert message in caught.value.message
    assert caught.value.hint


def test_the_play_receives_plain_data() -> None:
    data = lab().as_vars()
    assert data["hosts"]["gpu-1"]["runtime"] == {
        "kind": "llamacpp",
        "models": ["alpha"],
        "ports": {"alpha": 8081},
        "listen_address": "198.18.10.11",
    }
    assert data["hosts"]["depot-1"]["roles"] == [
        "preflight",
        "local_repo",
        "repo_server",
        "firewall",
        "gateway",
    ]


MINIO = {**LLAMACPP, "object_store": "minio"}


def test_filesystem_plans_no_store() -> None:
    assert single_box().object_store is None
    assert "object_store" not in single_box().hosts["localhost"].roles
    assert single_box().as_vars()["object_store"] is None


def test_single_box_store_listens_on_loopback_and_opens_nothing() -> None:
    topology = single_box(object_store="minio")
    assert topology.object_store is not None
    assert topology.object_store.url == "https://127.0.0.1:9000"
    box = topology.hosts["localhost"]
    assert box.roles == (
        "preflight",
        "local_repo",
        "firewall",
        "object_store",
        "runtime_llamacpp",
        "gateway",
    )
    assert box.firewall.service_ports == (8000,)


def test_lab_store_runs_on_the_depot_open_to_the_internal_networks() -> None:
    topology = lab(stack=MINIO)
    store = topology.object_store
    assert store is not None
    assert (store.host, store.listen_address, store.url) == (
        "depot-1",
        "198.18.10.2",
        "https://198.18.10.2:9000",
    )
    assert "object_store" in topology.hosts["depot-1"].roles
    assert "object_store" not in topology.hosts["gpu-1"].roles
    assert 9000 in topology.hosts["depot-1"].firewall.service_ports
    assert 9000 not in topology.hosts["gpu-1"].firewall.service_ports
    assert topology.as_vars()["object_store"]["url"] == "https://198.18.10.2:9000"


def test_store_port_from_the_inventory() -> None:
    topology = lab({"depot-1": {"object_store_port": 9443}}, stack=MINIO)
    assert topology.object_store is not None and topology.object_store.port == 9443


def test_store_for_other_hosts_needs_the_depot_ipv4_address() -> None:
    with pytest.raises(InventoryError) as caught:
        lab({"depot-1": {"ansible_host": "depot.lab"}}, stack=MINIO)
    assert str(caught.value) == (
        "host depot-1 runs the object store for the other hosts, but its address 'depot.lab' "
        "is not an IPv4 address"
    )


def test_gpu_nodes_install_the_driver_only_when_the_bundle_carries_one() -> None:
    base: dict[str, dict[str, Any]] = {
        "depot-1": {"ansible_host": "198.18.10.2"},
        "gpu-1": {"ansible_host": "198.18.10.11", "runtime_llamacpp_models": ["alpha"]},
        "gpu-2": {"ansible_host": "198.18.10.12", "runtime_llamacpp_models": ["beta"]},
    }
    common: dict[str, Any] = {
        "hosts": sorted(base),
        "depot": "depot-1",
        "gpu_nodes": ["gpu-1", "gpu-2"],
        "host_vars": base,
        "stack": LLAMACPP,
        "models": GGUF,
    }
    without = plan(**common)
    assert all("nvidia_driver" not in p.roles for p in without.hosts.values())
    driver = plan(**common, nvidia={"driver": {"version": "535.261.03"}, "container_toolkit": {}})
    assert driver.hosts["gpu-1"].roles == (
        "preflight", "local_repo", "firewall", "gpu_facts", "nvidia_driver", "runtime_llamacpp",
    )  # fmt: skip
    assert "nvidia_driver" not in driver.hosts["depot-1"].roles  # the depot is no GPU node here
    toolkit = plan(**common, nvidia={"container_toolkit": {"nvidia-container-toolkit": "1.20.1-1"}})
    assert toolkit.groups()["appliance_nvidia_container_toolkit"] == ["gpu-1", "gpu-2"]


def test_with_a_registry_every_host_configures_its_container_engines() -> None:
    topology = lab(stack={**LLAMACPP, "registry": "distribution"})
    assert topology.groups()["appliance_container_engines"] == ["depot-1", "gpu-1", "gpu-2"]
    assert "appliance_container_engines" not in lab().groups()
    under_k3s = lab(stack={**LLAMACPP, "registry": "distribution", "orchestrator": "k3s"})
    assert "appliance_container_engines" not in under_k3s.groups()
