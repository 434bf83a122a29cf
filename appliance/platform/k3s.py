"""k3s air-gapped: its config.yaml, registries.yaml and the manifests the server deploys.

k3s reads one ``config.yaml`` of command-line flags, and ``registries.yaml`` for its embedded
containerd. Every upstream registry the bundle's images come from is mirrored to the local
registry under its own host name (one rewrite rule each); ``disable-default-registry-endpoint``
stops containerd from falling back to the upstream host, and a ``"*"`` mirror sends every other
registry to the local one too, where an image the bundle does not hold is simply not found.
Nothing here names a place outside the boundary.

The runtimes run as one Deployment per model, by the bundle's image digest, with the model's
files mounted read-only from the release on its node; a NetworkPolicy lets only the gateway's
host reach them and lets them reach nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.registry import namespace as registry_namespace
from appliance.registry import split_reference, upstream_host

REGISTRIES_FILE = "/etc/rancher/k3s/registries.yaml"
# The cluster's own networks (k3s's defaults, written into the server's config so that the host
# firewall, which plans them too, and k3s cannot disagree): the pods' (flannel) and the
# Services'. The firewall treats them as inside the boundary on a k3s node (output, forward),
# and drops whatever a pod sends anywhere else.
CLUSTER_CIDR = "10.42.0.0/16"
SERVICE_CIDR = "10.43.0.0/16"
CLUSTER_CIDRS = (CLUSTER_CIDR, SERVICE_CIDR)
# Between a multi-host cluster's nodes, open to the internal networks: flannel's VXLAN (UDP) and
# the kubelet's API (TCP; the server reaches each agent's for logs, exec and metrics).
FLANNEL_VXLAN_PORT = 8472
KUBELET_PORT = 10250
NAMESPACE = "appliance"
LABEL_PREFIX = "appliance"
# Kubernetes label values: at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends.
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LocalRegistry:
    """The registry inside the boundary as a node reaches it: ``address`` is host:port, the
    CA file and the pull-only identity are on the node (root-only)."""

    address: str
    ca_file: str
    username: str
    password: str


def registries(images: Sequence[str], registry: LocalRegistry) -> dict[str, Any]:
    """registries.yaml: a mirror per upstream host of ``images`` (the manifest's references)."""
    endpoint = [f"https://{registry.address}"]
    mirrors: dict[str, Any] = {
        host: {"endpoint": endpoint, "rewrite": {"^(.*)$": f"{registry_namespace(host)}/$1"}}
        for host in sorted({upstream_host(ref) for ref in images})
    }
    mirrors["*"] = {"endpoint": endpoint}
    return {
        "mirrors": mirrors,
        "configs": {
            registry.address: {
                "auth": {"username": registry.username, "password": registry.password},
                "tls": {"ca_file": registry.ca_file},
            }
        },
    }


def label_value(text: str) -> str:
    """``text`` as a label value (NVIDIA H200 -> NVIDIA-H200)."""
    cleaned = _LABEL_UNSAFE.sub("-", text).strip("-._")[:63].rstrip("-._")
    return cleaned or "unknown"


def gpu_labels(gpu_fact: Mapping[str, Any]) -> list[str]:
    """Node labels from a host's ``appliance_gpu`` fact (gpu_facts role): what the scheduler and
    an operator need to place a model, as ``key=value`` for k3s's ``node-label``."""
    gpus = list(gpu_fact.get("gpus") or [])
    if not gpus:
        return []
    names = sorted({str(gpu.get("name", "unknown")) for gpu in gpus})
    memory = min(int(gpu.get("memory_total_mib") or 0) for gpu in gpus)
    return [
        f"{LABEL_PREFIX}/gpu=true",
        f"{LABEL_PREFIX}/gpu.count={len(gpus)}",
        f"{LABEL_PREFIX}/gpu.product={label_value('_'.join(names))}",
        f"{LABEL_PREFIX}/gpu.memory-mib={memory}",
        f"{LABEL_PREFIX}/gpu.driver={label_value(str(gpu_fact.get('driver_version', '')))}",
    ]


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _common(node_ip: str, token_file: str, labels: Sequence[str], gpu: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "token-file": token_file,
        "private-registry": REGISTRIES_FILE,
        "disable-default-registry-endpoint": True,
    }
    if _is_ip(node_ip):
        # An inventory name (a single box's localhost): k3s picks its default route's address.
        config["node-ip"] = node_ip
    if labels:
        config["node-label"] = list(labels)
    if gpu:
        # The NVIDIA runtime (nvidia_container_toolkit role) for every pod on a GPU node, so the
        # device plugin and the runtimes need no RuntimeClass.
        config["default-runtime"] = "nvidia"
    return config


def server_config(
    node_ip: str, token_file: str, labels: Sequence[str] = (), gpu: bool = False
) -> dict[str, Any]:
    """config.yaml of the server (the depot)."""
    return {
        **_common(node_ip, token_file, labels, gpu),
        "write-kubeconfig-mode": "0600",
        "tls-san": [node_ip],
        "secrets-encryption": True,
        "cluster-cidr": CLUSTER_CIDR,
        "service-cidr": SERVICE_CIDR,
        # The gateway runs on the host and no Service is exposed: k3s's ingress and load
        # balancer would only add images and open ports.
        "disable": ["traefik", "servicelb"],
    }


def agent_config(
    server_ip: str, node_ip: str, token_file: str, labels: Sequence[str] = (), gpu: bool = False
) -> dict[str, Any]:
    """config.yaml of an agent (a GPU node)."""
    return {**_common(node_ip, token_file, labels, gpu), "server": f"https://{server_ip}:6443"}


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


# The RuntimeClass k3s itself deploys (k3s-io/k3s manifests/runtimes.yaml: ``nvidia``, handler
# ``nvidia``), whose handler k3s adds to its containerd configuration when it finds
# nvidia-container-runtime on the node. GPU pods name it, so they get the NVIDIA runtime even
# where ``default-runtime`` is not set.
NVIDIA_RUNTIME_CLASS = "nvidia"
# A runtime's only writable places: the pod's own emptyDirs, never the host's directories.
SCRATCH = "/tmp"  # noqa: S108
SHARED_MEMORY = "/dev/shm"  # noqa: S108
# What every container gets: no privilege, no capability, the runtime's default seccomp filter.
_LOCKED_DOWN: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def device_plugin(image: str) -> dict[str, Any]:
    """NVIDIA's device plugin as a DaemonSet on the GPU nodes, by the bundle's digest."""
    split_reference(image)  # refuses a reference that is not pinned by digest
    labels = {"app.kubernetes.io/name": "nvidia-device-plugin"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "nvidia-device-plugin", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {f"{LABEL_PREFIX}/gpu": "true"},
                    "runtimeClassName": NVIDIA_RUNTIME_CLASS,
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "priorityClassName": "system-node-critical",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [
                        {
                            "name": "nvidia-device-plugin",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            # A node whose GPUs the plugin cannot see must show, not pass.
                            "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "true"}],
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                            # Root (as NVIDIA's own manifest runs it): it creates its socket in
                            # the kubelet's root-owned device-plugins directory. It writes
                            # nothing else, so its root filesystem stays read-only.
                            "securityContext": {**_LOCKED_DOWN, "readOnlyRootFilesystem": True},
                            "volumeMounts": [
                                {
                                    "name": "device-plugins",
                                    "mountPath": "/var/lib/kubelet/device-plugins",
                                }
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "device-plugins",
                            "hostPath": {
                                "path": "/var/lib/kubelet/device-plugins",
                                "type": "Directory",
                            },
                        }
                    ],
                },
            },
        },
    }


@dataclass(frozen=True)
class ModelWorkload:
    """One model served by a runtime image on one node."""

    name: str
    image: str
    node: str
    model_dir: str
    port: int
    args: tuple[str, ...]
    health_path: str
    gpus: int = 0
    env: tuple[tuple[str, str], ...] = ()
    # Host memory the scheduler reserves (MiB): the runtime, plus the weights when they are
    # served from host memory (plan.workloads computes it from the model's files).
    memory_mib: int = 1024
    cpu: str = "1"
    # The user the runtime runs as; None: the image's own (root in the upstream images).
    run_as_user: int | None = 65532
    # Shared memory for the runtime's worker processes (MiB; vLLM's tensor parallelism), 0: none
    # beyond the container default.
    shm_mib: int = 0
    # Set: the pod runs on its node's network, its runtime listening on this address at
    # ``port`` as a systemd runtime would, so the gateway on the host reaches it there and the
    # host firewall (which admits the gateway's address alone) guards it; a NetworkPolicy does
    # not apply to a host-network pod. Empty: the pod's own network, the NetworkPolicy's.
    listen_address: str = ""


def _resource_name(model: str) -> str:
    """A DNS-1123 name for a model's objects (model names may hold dots and underscores)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    return f"model-{name}"[:63].rstrip("-")


def _pod_security(model: ModelWorkload) -> dict[str, Any]:
    if model.run_as_user is None:
        return {"seccompProfile": {"type": "RuntimeDefault"}}
    return {
        "runAsNonRoot": True,
        "runAsUser": model.run_as_user,
        "runAsGroup": model.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _scratch(model: ModelWorkload) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(mounts, volumes) of what the runtime may write: /tmp (its HOME and caches, plan.py's
    environment points them there) and shared memory; the rest of its filesystem is read-only."""
    mounts = [{"name": "tmp", "mountPath": SCRATCH}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}}]
    if model.shm_mib:
        mounts.append({"name": "shm", "mountPath": SHARED_MEMORY})
        volumes.append(
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{model.shm_mib}Mi"}}
        )
    return mounts, volumes


def model_deployment(model: ModelWorkload) -> dict[str, Any]:
    """The Deployment of one model: image by digest, files read-only, GPUs from the sizing."""
    split_reference(model.image)
    name = _resource_name(model.name)
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "runtime",
        f"{LABEL_PREFIX}/model": label_value(model.name),
    }
    requests: dict[str, Any] = {"cpu": model.cpu, "memory": f"{model.memory_mib}Mi"}
    resources: dict[str, Any] = {"requests": requests}
    if model.gpus:
        # An extended resource: requested and limited alike (Kubernetes requires both equal).
        requests["nvidia.com/gpu"] = model.gpus
        resources["limits"] = {"nvidia.com/gpu": model.gpus}
    get: dict[str, Any] = {"path": model.health_path, "port": model.port}
    if model.listen_address:
        # The kubelet probes a host-network pod at the node's address unless told where.
        get["host"] = model.listen_address
    probe = {"httpGet": get, "periodSeconds": 5}
    scratch_mounts, scratch_volumes = _scratch(model)
    container: dict[str, Any] = {
        "name": "runtime",
        "image": model.image,
        "imagePullPolicy": "IfNotPresent",
        "args": list(model.args),
        "env": [{"name": key, "value": value} for key, value in model.env],
        "ports": [{"containerPort": model.port, "name": "http", "protocol": "TCP"}],
        "readinessProbe": probe,
        # Loading weights takes minutes: the startup probe holds the others off for 30 min.
        "startupProbe": {**probe, "failureThreshold": 360},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6},
        "resources": resources,
        "securityContext": {
            **_LOCKED_DOWN,
            "readOnlyRootFilesystem": True,
            **({"runAsNonRoot": True} if model.run_as_user is not None else {}),
        },
        "volumeMounts": [
            {"name": "model", "mountPath": "/models", "readOnly": True},
            *scratch_mounts,
        ],
    }
    pod: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": model.node},
        **({"hostNetwork": True} if model.listen_address else {}),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(model),
        "containers": [container],
        "volumes": [
            {"name": "model", "hostPath": {"path": model.model_dir, "type": "Directory"}},
            *scratch_volumes,
        ],
    }
    if model.gpus:
        pod["runtimeClassName"] = NVIDIA_RUNTIME_CLASS
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            # The GPUs are the node's: the old pod gives them back before the new one starts.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def runtime_network_policy(gateway_ips: Sequence[str], ports: Sequence[int]) -> dict[str, Any]:
    """Only the gateway's hosts reach the runtimes, on their ports; the runtimes reach nothing
    (an empty egress list denies all egress, DNS included).

    k3s enforces it with its embedded network policy controller (kube-router's, on unless the
    server's config says ``disable-network-policy``, which server_config never does). The
    kubelet's probes come from the pod's own node, which kube-router always admits. An
    ``ipBlock`` matches the packet's source as the pod sees it: the gateway host's address when
    the gateway reaches a NodePort with ``externalTrafficPolicy: Local`` (or over flannel's
    host-gw backend), but not when a host reaches a pod on another node over the default VXLAN
    backend, whose source is that host's ``flannel.1`` address."""
    if not gateway_ips:
        raise ValueError("runtime_network_policy needs the gateway's address")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "runtimes-gateway-only", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "runtime"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": f"{ip}/32"}} for ip in sorted(gateway_ips)],
                    "ports": [{"protocol": "TCP", "port": port} for port in sorted(set(ports))],
                }
            ],
            "egress": [],
        },
    }


def manifests(
    workloads: Sequence[ModelWorkload], gateway_ips: Sequence[str], device_plugin_image: str | None
) -> list[dict[str, Any]]:
    """Everything the server deploys, in the order it must exist."""
    docs = [namespace()]
    if device_plugin_image:
        docs.append(device_plugin(device_plugin_image))
    names = [_resource_name(w.name) for w in workloads]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        # One Deployment per model: a second one of the same name would replace the first.
        raise ValueError(f"more than one workload would be named {', '.join(twice)}")
    docs.extend(model_deployment(w) for w in sorted(workloads, key=lambda w: w.name))
    if workloads:
        docs.append(runtime_network_policy(gateway_ips, [w.port for w in workloads]))
    return docs


def ready_nodes(node_list: Mapping[str, Any]) -> list[str]:
    """The names of the Ready nodes in ``kubectl get nodes -o json``'s List, sorted."""
    names = []
    for node in node_list.get("items") or []:
        conditions = (node.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            names.append(str((node.get("metadata") or {}).get("name", "")))
    return sorted(names)
