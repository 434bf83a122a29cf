"""k3s's rendered files, checked without the binary: config.yaml keys against k3s's own flags,
registries.yaml against its documented structure (a mirror per upstream registry, no fallback),
and every manifest against Kubernetes' strict JSON schema of the release k3s runs (1.34)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from appliance.gpu.facts import parse_nvidia_smi_xml
from appliance.install.topology import plan
from appliance.platform.k3s import (
    LocalRegistry,
    ModelWorkload,
    agent_config,
    device_plugin,
    gpu_labels,
    manifests,
    model_deployment,
    ready_nodes,
    registries,
    runtime_network_policy,
    server_config,
)
from appliance.platform.plan import k3s_plan, workloads
from appliance.registry import RegistryError, repository, split_reference, upstream_host
from tests.fixtures import k3s_flags
from tests.fixtures.gpu_hosts import h200_xml

K8S_VERSION = "1.34.0"  # k3s v1.34.3+k3s1 (../shared/upstream-pins.md)
DIGEST = "sha256:" + "ab" * 32
IMAGES = [
    f"ghcr.io/acme/llama-server@{DIGEST}",
    f"nvcr.io/nvidia/k8s-device-plugin:v0.20.0@{DIGEST}",
    f"busybox@{DIGEST}",
    f"registry.example.internal:5000/team/vllm@{DIGEST}",
]
REGISTRY = LocalRegistry("198.18.10.2:5000", "/etc/appliance/pki/ca.crt", "pull", "s3cret-pull")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def validate(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def upstream_hosts(refs: list[str]) -> list[str]:
    return sorted({upstream_host(ref) for ref in refs})


def test_image_names_keep_their_upstream_host_and_docker_hub_gets_its_implicit_one() -> None:
    assert repository(IMAGES[0]) == "ghcr.io/acme/llama-server"
    assert split_reference(IMAGES[2])[:2] == ("docker.io", "library/busybox")
    assert repository(IMAGES[3]) == "registry.example.internal_5000/team/vllm"
    assert upstream_hosts(IMAGES) == sorted(
        ["docker.io", "ghcr.io", "nvcr.io", "registry.example.internal:5000"]
    )
    with pytest.raises(RegistryError, match="not pinned"):
        split_reference("ghcr.io/acme/app:1.0")


def test_registries_mirror_every_upstream_host_to_the_local_registry_only() -> None:
    rendered = registries(IMAGES, REGISTRY)
    hosts = set(upstream_hosts(IMAGES))
    assert set(rendered["mirrors"]) == hosts | {"*"}
    for host in hosts:
        mirror = rendered["mirrors"][host]
        assert mirror["endpoint"] == ["https://198.18.10.2:5000"]
        # The local layout keeps the upstream host: one rule maps every image of it.
        # The rewritten path is where the registry role seeded the image.
        ((pattern, replacement),) = mirror["rewrite"].items()
        rewritten = re.sub(pattern, replacement.replace("$1", r"\1"), "acme/app")
        assert rewritten == repository(f"{host}/acme/app@{DIGEST}")
    # Every other registry lands on the local one too: an image it lacks is "not found".
    assert rendered["mirrors"]["*"] == {"endpoint": ["https://198.18.10.2:5000"]}
    config = rendered["configs"]["198.18.10.2:5000"]
    assert config["tls"] == {"ca_file": "/etc/appliance/pki/ca.crt"}
    # Structure as k3s documents it, and nothing in plain http.
    for mirror in rendered["mirrors"].values():
        assert set(mirror) <= k3s_flags.MIRROR_KEYS
        assert all(e.startswith("https://") for e in mirror["endpoint"])
    for entry in rendered["configs"].values():
        assert set(entry) <= k3s_flags.CONFIG_KEYS
        assert set(entry["auth"]) <= k3s_flags.AUTH_KEYS
        assert set(entry["tls"]) <= k3s_flags.TLS_KEYS
    assert yaml.safe_load(yaml.safe_dump(rendered)) == rendered


def test_configs_use_only_flags_their_command_knows_and_never_fall_back() -> None:
    server = server_config("198.18.10.2", "/etc/appliance/k3s/token", ["a/b=c"], gpu=False)
    agent = agent_config("198.18.10.2", "198.18.10.11", "/etc/appliance/k3s/token", gpu=True)
    assert set(server) <= k3s_flags.SERVER, set(server) - k3s_flags.SERVER
    assert set(agent) <= k3s_flags.AGENT, set(agent) - k3s_flags.AGENT
    for config in (server, agent):
        assert config["disable-default-registry-endpoint"] is True
        assert config["private-registry"] == "/etc/rancher/k3s/registries.yaml"
        assert "token" not in config  # the secret stays in its root-only file
    assert agent["server"] == "https://198.18.10.2:6443"
    assert agent["default-runtime"] == "nvidia"
    assert "default-runtime" not in server
    assert server["write-kubeconfig-mode"] == "0600"
    assert agent["node-ip"] == "198.18.10.11"
    # An inventory name is not an address k3s can advertise: it picks its own.
    assert "node-ip" not in server_config("localhost", "/t")


def test_gpu_labels_from_the_real_h200_facts_are_valid_label_values() -> None:
    facts = parse_nvidia_smi_xml(h200_xml())
    labels = dict(label.split("=", 1) for label in gpu_labels(facts))
    assert labels == {
        "appliance/gpu": "true",
        "appliance/gpu.count": "1",
        "appliance/gpu.product": "NVIDIA-H200",
        "appliance/gpu.memory-mib": "143771",
        "appliance/gpu.driver": "580.159.04",
    }
    assert all(LABEL_VALUE.match(value) for value in labels.values())
    assert gpu_labels({}) == []
    hostile = gpu_labels({"gpus": [{"name": "x" * 200 + " ;$(reboot)"}], "driver_version": ""})
    assert all(LABEL_VALUE.match(label.split("=", 1)[1]) for label in hostile)


def workload(name: str = "llama-3.1_8b.Q4", gpus: int = 1) -> ModelWorkload:
    return ModelWorkload(
        name=name, image=IMAGES[0], node="gpu-1", model_dir=f"/var/lib/appliance/models/{name}",
        port=8081, args=("--port", "8081"), health_path="/health", gpus=gpus,
    )  # fmt: skip


def test_every_manifest_validates_against_kubernetes_1_34() -> None:
    docs = manifests([workload(), workload("beta", 0)], ["198.18.10.2"], IMAGES[1])
    assert [d["kind"] for d in docs] == [
        "Namespace", "DaemonSet", "Deployment", "Deployment", "NetworkPolicy",
    ]  # fmt: skip
    for doc in docs:
        validate(doc)
    # A broken manifest does fail validation: the check is real.
    broken = model_deployment(workload())
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_a_model_deployment_runs_its_image_by_digest_read_only_on_its_node() -> None:
    deployment = model_deployment(workload())
    assert deployment["metadata"]["name"] == "model-llama-3-1-8b-q4"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].endswith(DIGEST)
    # The GPU limit from the sizing; the requests (GPU equal to it, CPU, memory) come with it.
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["resources"]["requests"] == {
        "cpu": "1",
        "memory": "1024Mi",
        "nvidia.com/gpu": 1,
    }
    # The model read-only; /tmp (scratch, an emptyDir) beside it.
    assert container["volumeMounts"][:1] == [
        {"name": "model", "mountPath": "/models", "readOnly": True}
    ]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "gpu-1"}
    assert pod["automountServiceAccountToken"] is False
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8081}
    with pytest.raises(RegistryError, match="not pinned"):
        model_deployment(ModelWorkload("m", "ghcr.io/a/b:1", "n", "/d", 1, (), "/health"))


def test_the_network_policy_admits_the_gateway_alone_and_denies_all_egress() -> None:
    policy = runtime_network_policy(["198.18.10.2"], [8081, 8082, 8081])
    spec = policy["spec"]
    assert spec["egress"] == [] and spec["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"ipBlock": {"cidr": "198.18.10.2/32"}}]
    assert [p["port"] for p in rule["ports"]] == [8081, 8082]
    validate(policy)
    with pytest.raises(ValueError, match="gateway"):
        runtime_network_policy([], [8081])


def test_the_plan_for_a_depot_and_gpu_nodes_holds_no_secret() -> None:
    host_vars = {
        "depot-1": {"ansible_host": "198.18.10.2"},
        "gpu-1": {"ansible_host": "198.18.10.11", "runtime_llamacpp_models": ["alpha"]},
    }
    models = [{"name": "alpha", "format": "gguf", "files": [{"name": "alpha.gguf"}]}]
    topology = plan(
        hosts=sorted(host_vars), depot="depot-1", gpu_nodes=["gpu-1"], host_vars=host_vars,
        stack={"runtime": "llamacpp", "orchestrator": "systemd"}, models=models,
    )  # fmt: skip
    loads = workloads(topology, models, {"llamacpp": IMAGES[0]}, gpus={"alpha": 1})
    result = k3s_plan(
        topology, images=IMAGES, registry=REGISTRY, workloads=loads,
        device_plugin_image=IMAGES[1], gpu_nodes=["gpu-1"],
    )  # fmt: skip
    assert result["server"] == "depot-1"
    assert "server" not in result["configs"]["depot-1"]
    assert result["configs"]["gpu-1"]["server"] == "https://198.18.10.2:6443"
    assert result["configs"]["gpu-1"]["default-runtime"] == "nvidia"
    assert "s3cret-pull" not in json.dumps(result)
    (deployment,) = [d for d in result["manifests"] if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--model", "/models/alpha.gguf"]
    for doc in result["manifests"]:
        validate(doc)
    with pytest.raises(ValueError, match="no image for runtime 'llamacpp'"):
        workloads(topology, models, {})


def test_a_model_runs_locked_down_as_a_non_root_user_with_scratch_space_only() -> None:
    pod = model_deployment(workload())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # Writable: /tmp only (HOME and caches), never the model's files.
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"]
    # A GPU pod names k3s's own RuntimeClass; readiness, liveness and startup share the path.
    assert pod["runtimeClassName"] == "nvidia"
    assert {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe",
                                                      "startupProbe")} == {"/health"}  # fmt: skip
    cpu_pod = model_deployment(workload("beta", 0))["spec"]["template"]["spec"]
    assert "runtimeClassName" not in cpu_pod and "tolerations" not in cpu_pod
    assert "limits" not in cpu_pod["containers"][0]["resources"]
    # An image that cannot run as another user keeps its own, still without privileges.
    root = model_deployment(replace(workload(), run_as_user=None))["spec"]["template"]["spec"]
    assert root["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert "runAsNonRoot" not in root["containers"][0]["securityContext"]
    validate(model_deployment(replace(workload(), run_as_user=None, shm_mib=2048)))


def test_the_device_plugin_runs_the_bundle_image_with_the_nvidia_runtime_on_gpu_nodes() -> None:
    plugin = device_plugin(IMAGES[1])
    pod = plugin["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGES[1]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"appliance/gpu": "true"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    validate(plugin)
    with pytest.raises(RegistryError, match="not pinned"):
        device_plugin("nvcr.io/nvidia/k8s-device-plugin:v0.17.1")


def test_two_workloads_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="more than one workload would be named model-alpha"):
        manifests(
            [workload("alpha"), replace(workload("alpha"), node="gpu-2")], ["198.18.10.2"], None
        )


def test_each_runtime_gets_its_health_path_environment_and_memory_from_its_files() -> None:
    host_vars: dict[str, dict[str, Any]] = {
        "depot-1": {"ansible_host": "198.18.10.2"},
        "gpu-1": {"ansible_host": "198.18.10.11", "runtime_vllm_models": ["big"]},
    }
    models = [{"name": "big", "format": "safetensors",
               "files": [{"name": "model.safetensors", "size": 16 * 1024**3}]}]  # fmt: skip
    topology = plan(
        hosts=sorted(host_vars), depot="depot-1", gpu_nodes=["gpu-1"], host_vars=host_vars,
        stack={"runtime": "vllm", "orchestrator": "systemd"}, models=models,
    )  # fmt: skip
    (on_gpu,) = workloads(topology, models, {"vllm": IMAGES[3]}, gpus={"big": 2})
    (on_cpu,) = workloads(topology, models, {"vllm": IMAGES[3]})
    env = dict(on_gpu.env)
    assert env["HOME"] == "/tmp" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CACHE_ROOT"].startswith("/tmp/")
    # Weights on the GPUs need no host memory of their own; on the CPU they do.
    assert (on_gpu.memory_mib, on_cpu.memory_mib) == (4096, 4096 + 16 * 1024)
    assert on_gpu.shm_mib == 2048 and on_gpu.health_path == "/health"
    deployment = model_deployment(on_gpu)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2048Mi"}
    validate(deployment)
    result = k3s_plan(
        topology, images=IMAGES, registry=REGISTRY, workloads=[on_gpu],
        device_plugin_image=IMAGES[1], gpu_nodes=["gpu-1"],
    )  # fmt: skip
    # Nodes carry their inventory names: the node selectors and verify's GPU facts use them.
    assert {name: c["node-name"] for name, c in result["configs"].items()} == {
        "depot-1": "depot-1", "gpu-1": "gpu-1",
    }  # fmt: skip
    for config in result["configs"].values():
        assert set(config) <= k3s_flags.SERVER | k3s_flags.AGENT
        # k3s's network policy controller enforces the runtimes' policy: never disabled.
        assert "disable-network-policy" not in config


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [("extensions/v1beta1", "Deployment"), ("apps/v1beta2", "DaemonSet"),
     ("extensions/v1beta1", "NetworkPolicy")],
)  # fmt: skip
def test_an_api_version_kubernetes_1_34_no_longer_serves_is_refused(
    api_version: str, kind: str
) -> None:
    (document,) = [d for d in manifests([workload()], ["198.18.10.2"], IMAGES[1])
                   if d["kind"] == kind]  # fmt: skip
    validate(document)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({**document, "apiVersion": api_version})


def test_ready_nodes_names_only_the_nodes_whose_ready_condition_is_true() -> None:
    def node(name: str, *conditions: tuple[str, str]) -> dict[str, object]:
        listed = [{"type": kind, "status": status} for kind, status in conditions]
        return {"metadata": {"name": name}, "status": {"conditions": listed}}

    listed = {
        "kind": "List",
        "items": [
            node("gpu-2", ("MemoryPressure", "False"), ("Ready", "True")),
            node("gpu-1", ("Ready", "False")),
            node("depot-1", ("Ready", "Unknown")),
            node("extra", ("Ready", "True")),
            {"metadata": {"name": "no-status"}},
        ],
    }
    assert ready_nodes(listed) == ["extra", "gpu-2"]
    # The role's wait: planned names less the Ready ones; an extra Ready node hides nothing.
    assert sorted({"gpu-1", "gpu-2"} - set(ready_nodes(listed))) == ["gpu-1"]
    assert ready_nodes({"kind": "List", "items": []}) == []
