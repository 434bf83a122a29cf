"""The installer's plan for the container platform, handed to the roles as
``appliance_platform``: what each k3s node's config.yaml says, the registries.yaml every node
shares (without the pull identity's password, which the role reads on the host), the manifests
the server applies, and harbor.yml (without its passwords, which the role generates on the
depot). GPU labels come from each node's facts at play time (the k3s role's
``appliance_k3s_labels`` filter, the same ``gpu_labels`` as here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from appliance.install.topology import Topology
from appliance.platform.harbor import HarborSettings, harbor_yml, project_name
from appliance.platform.k3s import (
    SCRATCH,
    LocalRegistry,
    ModelWorkload,
    agent_config,
    manifests,
    registries,
    server_config,
)
from appliance.registry import upstream_host

TOKEN_FILE = "/etc/appliance/k3s/token"  # noqa: S105 (a path, not a secret)
MODELS_DIR = "/var/lib/appliance/models"

# Inside a pod the runtime listens on the pod's own address; the NetworkPolicy decides who
# reaches it.
ANY = "0.0.0.0"  # noqa: S104

# How each runtime's image is told what to serve inside its pod (the model's files are at
# /models, read-only). The images are the bundle's, named per runtime in the plan's input.
_HEALTH = {"llamacpp": "/health", "vllm": "/health", "ollama": "/api/version"}


def _runtime_args(
    kind: str, model: str, files: Sequence[str], port: int, listen: str = ANY
) -> tuple[str, ...]:
    if kind == "llamacpp":
        gguf = sorted(f for f in files if f.endswith(".gguf"))[:1] or ["model.gguf"]
        return ("--model", f"/models/{gguf[0]}", "--alias", model,
                "--host", listen, "--port", str(port))  # fmt: skip
    if kind == "vllm":
        return ("--model", "/models", "--served-model-name", model,
                "--host", listen, "--port", str(port))  # fmt: skip
    if kind == "ollama":
        return ("serve",)
    raise ValueError(f"no k3s workload for runtime {kind!r}")


# The runtimes run as a user of no image's (k3s.ModelWorkload.run_as_user) with a read-only root
# filesystem: HOME and every cache go to the pod's writable /tmp, as the systemd units give each
# runtime a state directory of its own.
_HOME = (("HOME", SCRATCH), ("XDG_CACHE_HOME", f"{SCRATCH}/cache"))


def _runtime_env(kind: str, port: int, listen: str = ANY) -> tuple[tuple[str, str], ...]:
    if kind == "vllm":
        # Never reach for the hub or send usage statistics (see upstream-pins, vLLM).
        return (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                ("VLLM_NO_USAGE_STATS", "1"), ("DO_NOT_TRACK", "1"), *_HOME,
                ("VLLM_CACHE_ROOT", f"{SCRATCH}/cache/vllm"),
                ("HF_HOME", f"{SCRATCH}/cache/huggingface"))  # fmt: skip
    if kind == "ollama":
        # The models directory is read-only: Ollama must not prune blobs there at start.
        return (("OLLAMA_HOST", f"{listen}:{port}"), ("OLLAMA_MODELS", "/models"),
                ("OLLAMA_NOPRUNE", "1"), *_HOME)  # fmt: skip
    return _HOME


# Host memory each runtime needs beyond the weights (MiB), and vLLM's shared memory for its
# worker processes: requests the scheduler reserves, not limits (a limit would kill a runtime
# whose page cache of mmapped weights grows during load).
_MEMORY_MIB = {"llamacpp": 512, "ollama": 1024, "vllm": 4096}
_SHM_MIB = {"vllm": 2048}


def _memory_mib(kind: str, files: Sequence[Mapping[str, Any]], gpus: int) -> int:
    """The runtime's own memory, plus the weights where they are served from host memory."""
    weights = 0 if gpus else sum(int(f.get("size") or 0) for f in files) // (1024 * 1024)
    return _MEMORY_MIB[kind] + weights


def workloads(
    topology: Topology,
    models: Sequence[Mapping[str, Any]],
    runtime_images: Mapping[str, str],
    gpus: Mapping[str, int] | None = None,
    host_network: bool = False,
) -> list[ModelWorkload]:
    """One workload per model the topology places on a node. ``host_network``: each runs on
    its node's network at the address and port the topology planned (ModelWorkload)."""
    by_name = {str(m["name"]): m for m in models}
    found: list[ModelWorkload] = []
    for host in sorted(topology.hosts.values(), key=lambda h: h.name):
        runtime = host.runtime
        if runtime is None:
            continue
        if runtime.kind not in runtime_images:
            raise ValueError(f"the bundle names no image for runtime {runtime.kind!r}")
        for model in runtime.models:
            if model not in by_name:
                # Its files name what the runtime serves: without them the workload would
                # serve a file the node does not have.
                raise ValueError(f"model {model!r} on {host.name} is not among the models given")
            port = runtime.ports[model]
            listed = list(by_name.get(model, {}).get("files", []))
            files = [str(f["name"]) for f in listed]
            count = (gpus or {}).get(model, 0)
            listen = runtime.listen_address if host_network else ANY
            found.append(
                ModelWorkload(
                    name=model,
                    image=runtime_images[runtime.kind],
                    node=host.name,
                    model_dir=f"{MODELS_DIR}/{model}",
                    port=port,
                    args=_runtime_args(runtime.kind, model, files, port, listen),
                    health_path=_HEALTH[runtime.kind],
                    gpus=count,
                    env=_runtime_env(runtime.kind, port, listen),
                    memory_mib=_memory_mib(runtime.kind, listed, count),
                    shm_mib=_SHM_MIB.get(runtime.kind, 0),
                    listen_address=runtime.listen_address if host_network else "",
                )
            )
    return found


def k3s_plan(
    topology: Topology,
    *,
    images: Sequence[str],
    registry: LocalRegistry,
    workloads: Sequence[ModelWorkload],
    device_plugin_image: str | None,
    gpu_nodes: Sequence[str],
) -> dict[str, Any]:
    """``appliance_platform.k3s``: the server is the depot, every other host an agent."""
    server = topology.depot
    configs: dict[str, Any] = {}
    for name, host in sorted(topology.hosts.items()):
        gpu = name in gpu_nodes
        if name == server:
            configs[name] = server_config(host.address, TOKEN_FILE, gpu=gpu)
        else:
            configs[name] = agent_config(topology.depot_address, host.address, TOKEN_FILE, gpu=gpu)
        # Each node is named after its inventory host, as the Deployments' node selectors and
        # appliance verify (GPU facts per host) name it; k3s would take the machine's hostname.
        configs[name]["node-name"] = name
    shared = registries(images, registry)
    # The pull identity's password never leaves the hosts: the role fills it in there.
    shared["configs"][registry.address].pop("auth")
    gateway = [topology.hosts[topology.gateway_host].address] if topology.gateway_host else []
    return {
        "server": server,
        "configs": configs,
        "registry_address": registry.address,
        "registries": shared,
        "manifests": manifests(workloads, gateway, device_plugin_image if gpu_nodes else None),
    }


def _san(address: str) -> str:
    """A subjectAltName entry: an inventory address is an IP or a host name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return f"DNS:{address}"
    return f"IP:{address}"


def harbor_plan(topology: Topology, images: Sequence[str], port: int = 443) -> dict[str, Any]:
    """``appliance_platform.harbor``: Harbor on the depot, a project per upstream registry.

    With the topology's registry (``registry: harbor``), Harbor listens where the registry's
    plan says every host pulls from (its address and port, loopback on a single box) and keeps
    its data in the registry's storage directory, which preflight sizes for the images."""
    registry = topology.registry
    address = registry.address if registry is not None else topology.depot_address
    port = registry.port if registry is not None else port
    certs = "/etc/appliance/harbor/certs"
    settings = HarborSettings(
        hostname=address, certificate=f"{certs}/public.crt", private_key=f"{certs}/private.key",
        https_port=port,
    )  # fmt: skip
    if registry is not None:
        settings = replace(settings, data_volume=registry.data_dir)
    return {
        "address": address if port == 443 and registry is None else f"{address}:{port}",
        "data_volume": settings.data_volume,
        "harbor_yml": harbor_yml(settings),
        "projects": [project_name(host) for host in sorted({upstream_host(r) for r in images})],
        "certificate_names": sorted(
            {
                _san(address),
                _san(topology.depot_address),
                "IP:127.0.0.1",
                "DNS:localhost",
                f"DNS:{topology.depot}",
            }
        ),
    }
