"""orchestrator: k3s wired into install: the roles the play runs, the topology's hosts, the
checks on a bundle before any host changes, and the plan handed to the k3s role
(appliance_platform) with each model a host-network Deployment of the bundle's image."""

from __future__ import annotations

import kubernetes_validate
import pytest

from appliance.bundle.manifest import (
    Component,
    FileEntry,
    KernelAbi,
    Manifest,
    NvidiaDriver,
    NvidiaInfo,
)
from appliance.errors import InstallError
from appliance.install.checks import check_can_install
from appliance.install.platform_vars import platform_vars
from appliance.install.topology import K3S_SERVER_PORT, plan
from appliance.platform.k3s import CLUSTER_CIDRS, FLANNEL_VXLAN_PORT, KUBELET_PORT, server_config
from appliance.roles import play_roles, required_packages, role_packages
from tests.fixtures.bundles import new_manifest

K3S = {"runtime": "llamacpp", "orchestrator": "k3s", "registry": "distribution",
       "object_store": "filesystem"}  # fmt: skip
DIGEST = "sha256:" + "b" * 64
RUNTIME_IMAGE = f"ghcr.io/ggml-org/llama.cpp:server@{DIGEST}"
OTHER_IMAGE = f"ghcr.io/team/app:1@sha256:{'c' * 64}"
GGUF = [{"name": "alpha", "format": "gguf"}, {"name": "beta", "format": "gguf"}]
LAB = {
    "depot-1": {"ansible_host": "198.18.10.2"},
    "gpu-1": {"ansible_host": "198.18.10.11", "runtime_llamacpp_models": ["alpha"]},
    "gpu-2": {"ansible_host": "198.18.10.12", "runtime_llamacpp_models": ["beta"]},
}


def _file(name: str) -> FileEntry:
    return FileEntry(path=f"files/{name}", sha256="a" * 64, size=1, kind="file", component=name)


def _manifest(
    stack: dict[str, str] = K3S,
    files: tuple[str, ...] = ("k3s", "k3s-airgap-images", "k3s-install.sh"),
    images: tuple[str, ...] = (RUNTIME_IMAGE, OTHER_IMAGE),
) -> Manifest:
    components = [Component(name=ref, kind="image", version=ref.split("@")[1]) for ref in images]
    components.append(Component(name="alpha", kind="model", version="gguf"))
    model = FileEntry(path="blobs/sha256/" + "d" * 64, sha256="d" * 64, size=1, kind="model",
                      component="alpha", name="alpha.gguf")  # fmt: skip
    return new_manifest([model, *(_file(f) for f in files)], components, stack=stack)


def test_under_k3s_the_runtimes_are_workloads_not_runtime_roles() -> None:
    roles = play_roles(K3S, serves_models=True)
    assert "runtime_llamacpp" not in roles
    assert roles.index("registry") < roles.index("k3s") < roles.index("artifacts")
    assert roles[-1] == "gateway"
    # llama.cpp's own OS packages are not needed: its image carries them.
    needed = required_packages(K3S, serves_models=True)
    runtime_only = set(role_packages("runtime_llamacpp")) - set(role_packages("gateway"))
    assert runtime_only and not runtime_only & set(needed)
    systemd = required_packages({**K3S, "orchestrator": "systemd"}, serves_models=True)
    assert set(role_packages("runtime_llamacpp")) <= set(systemd)


def test_the_k3s_server_is_the_depot_and_the_gpu_nodes_its_agents() -> None:
    topology = plan(hosts=sorted(LAB), depot="depot-1", gpu_nodes=["gpu-1", "gpu-2"],
                    host_vars=LAB, stack=K3S, models=GGUF)  # fmt: skip
    assert topology.groups()["appliance_k3s"] == ["depot-1", "gpu-1", "gpu-2"]
    assert "appliance_runtime_llamacpp" not in topology.groups()
    # The runtimes keep their planned address and ports, open to the gateway alone.
    gpu = topology.hosts["gpu-1"]
    assert gpu.runtime is not None and gpu.runtime.listen_address == "198.18.10.11"
    assert gpu.firewall.private_ports == (8081,)
    assert gpu.firewall.private_sources == ("198.18.10.2",)
    assert K3S_SERVER_PORT in topology.hosts["depot-1"].firewall.service_ports
    assert K3S_SERVER_PORT not in gpu.firewall.service_ports


def test_every_k3s_node_opens_the_cluster_s_ports_and_knows_its_networks() -> None:
    topology = plan(hosts=sorted(LAB), depot="depot-1", gpu_nodes=["gpu-1", "gpu-2"],
                    host_vars=LAB, stack=K3S, models=GGUF)  # fmt: skip
    for name in ("depot-1", "gpu-1", "gpu-2"):
        firewall = topology.hosts[name].firewall
        # flannel's VXLAN between the nodes, the kubelet for the server.
        assert firewall.udp_ports == (FLANNEL_VXLAN_PORT,), name
        assert KUBELET_PORT in firewall.service_ports, name
        # The pods' and Services' networks, which the server's config sets to the same.
        assert firewall.cluster_cidrs == CLUSTER_CIDRS, name
    server = server_config("198.18.10.2", "/etc/appliance/k3s/token")
    assert (server["cluster-cidr"], server["service-cidr"]) == CLUSTER_CIDRS
    # Without k3s no host routes for a cluster or opens its ports.
    stack = {**K3S, "orchestrator": "systemd"}
    systemd = plan(hosts=sorted(LAB), depot="depot-1", gpu_nodes=["gpu-1", "gpu-2"],
                   host_vars=LAB, stack=stack, models=GGUF)  # fmt: skip
    for host in systemd.hosts.values():
        assert (host.firewall.udp_ports, host.firewall.cluster_cidrs) == ((), ())
        assert KUBELET_PORT not in host.firewall.service_ports


def test_the_plan_runs_each_model_on_its_node_network_by_the_bundles_digest() -> None:
    topology = plan(hosts=["localhost"], depot="localhost", gpu_nodes=["localhost"],
                    host_vars={"localhost": {"ansible_connection": "local"}}, stack=K3S,
                    models=[GGUF[0]], images=[{"ref": RUNTIME_IMAGE, "blobs": {}}])  # fmt: skip
    result = platform_vars(_manifest(), topology, ["localhost"])
    assert result is not None
    k3s = result["k3s"]
    assert k3s["server"] == "localhost"
    assert k3s["configs"]["localhost"]["node-name"] == "localhost"
    assert k3s["registry_address"] == "127.0.0.1:5000"
    assert set(k3s["registries"]["mirrors"]) == {"ghcr.io", "*"}
    (deployment,) = [d for d in k3s["manifests"] if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == RUNTIME_IMAGE
    assert pod["hostNetwork"] is True
    assert container["args"][-4:] == ["--host", "127.0.0.1", "--port", "8081"]
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/health", "port": 8081, "host": "127.0.0.1",
    }  # fmt: skip
    # No GPU without the bundle's driver and device plugin.
    assert "limits" not in container["resources"]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    for doc in k3s["manifests"]:
        kubernetes_validate.validate(doc, "1.34.0", strict=True)
    assert platform_vars(_manifest({**K3S, "orchestrator": "systemd"}), topology, []) is None


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (_manifest(files=("k3s",)), "no file named 'k3s-airgap-images' (the airgap images"),
        (_manifest({**K3S, "registry": "none"}), "stack.registry is none: nothing would serve"),
    ],
)
def test_a_k3s_bundle_that_cannot_install_is_refused_before_any_change(
    manifest: Manifest, message: str
) -> None:
    with pytest.raises(InstallError, match=message.replace("(", r"\(")) as caught:
        check_can_install(manifest)
    assert "nothing was changed" in caught.value.hint


def test_a_k3s_bundle_without_its_runtime_image_is_refused() -> None:
    topology = plan(hosts=["localhost"], depot="localhost", gpu_nodes=["localhost"],
                    host_vars={"localhost": {}}, stack=K3S, models=[GGUF[0]],
                    images=[{"ref": OTHER_IMAGE, "blobs": {}}])  # fmt: skip
    with pytest.raises(InstallError, match="no image of the llamacpp runtime"):
        platform_vars(_manifest(images=(OTHER_IMAGE,)), topology, ["localhost"])


def test_a_site_model_s_workload_serves_its_own_file() -> None:
    """Site models (appliance models add) are in the topology beside the bundle's: their
    Deployment must name their file, not a guessed /models/model.gguf."""
    site = {"name": "tuned", "format": "gguf", "task": "chat",
            "files": [{"name": "tuned-q4.gguf", "sha256": "e" * 64, "size": 1}]}  # fmt: skip
    topology = plan(hosts=["localhost"], depot="localhost", gpu_nodes=["localhost"],
                    host_vars={"localhost": {"ansible_connection": "local"}}, stack=K3S,
                    models=[GGUF[0], site],
                    images=[{"ref": RUNTIME_IMAGE, "blobs": {}}])  # fmt: skip
    result = platform_vars(_manifest(), topology, ["localhost"], [site])
    assert result is not None
    args = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"]
        for d in result["k3s"]["manifests"]
        if d["kind"] == "Deployment"
    }
    assert args["model-tuned"][:2] == ["--model", "/models/tuned-q4.gguf"]
    assert args["model-alpha"][:2] == ["--model", "/models/alpha.gguf"]
    # Without the site's models their files are unknown: refused, not guessed.
    with pytest.raises(ValueError, match="model 'tuned' on localhost is not among"):
        platform_vars(_manifest(), topology, ["localhost"])


def test_k3s_with_the_device_plugin_and_no_container_toolkit_is_refused() -> None:
    plugin = "ghcr.io/nvidia/k8s-device-plugin@sha256:" + "e" * 64
    nvidia = NvidiaInfo(
        driver=NvidiaDriver(source="debian", version="535.247.01", branch="535",
                            modules="proprietary", dkms_package="nvidia-kernel-dkms",
                            packages={"nvidia-driver": "535.247.01-1~deb12u1"}),
        kernel_abis=[KernelAbi(abi="6.1.0-57-amd64", headers="linux-headers-6.1.0-57-amd64",
                               version="6.1.158-1")],
        install=["nvidia-driver"],
    )  # fmt: skip
    manifest = _manifest(images=(RUNTIME_IMAGE, plugin))
    refused = manifest.model_copy(update={"nvidia": nvidia})
    with pytest.raises(InstallError, match=r"nvidia\.container_toolkit: true"):
        check_can_install(refused)
    # With the toolkit, or without the device plugin (no GPU pods), the check passes and the
    # next one speaks (this test's bundles carry no OS packages).
    toolkit = nvidia.model_copy(update={"container_toolkit": {"nvidia-container-toolkit": "1"}})
    for fine in (
        manifest.model_copy(update={"nvidia": toolkit}),
        _manifest().model_copy(update={"nvidia": nvidia}),
    ):
        with pytest.raises(InstallError) as caught:
            check_can_install(fine)
        assert "carries no OS packages" in str(caught.value)
