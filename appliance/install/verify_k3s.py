"""appliance verify on k3s: judging what ``k3s kubectl get ... -o json`` said on the server.

The verify role reads nodes, pods, Deployments and NetworkPolicies on the k3s server (read-only)
and the manifests the server deploys (what the installer planned); this module judges them:
every node Ready, every pod's images held by the bundle (by digest, or k3s's own airgap images)
and reached through the local registry, each GPU node advertising exactly its GPUs, each
model's Deployment available with the runtime's health path as its readiness, the NetworkPolicy
that admits the gateway alone in place, and no pod nobody planned. Each failing check names the
node, pod or model and says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from appliance.bundle.manifest import Manifest
from appliance.install.verify_k3s_pods import (
    KUBECTL,
    K3sExpect,
    confinement_problems,
    judge_pods,
    pod_health,
)
from appliance.install.verify_models import Check
from appliance.platform.airgap import AIRGAP_FILE, read_airgap_images
from appliance.platform.k3s import LABEL_PREFIX, NAMESPACE
from appliance.registry import images as registry_images

__all__ = ["K3sExpect", "judge_k3s", "k3s_expect"]

GPU = "nvidia.com/gpu"
_STATE = ("nodes", "pods", "deployments", "networkpolicies")


def k3s_expect(
    manifest: Manifest, release: Path, evidence: Mapping[str, Mapping[str, Any]]
) -> K3sExpect:
    """What the cluster is judged against: the manifest's images, the images of the airgap
    tarball the release holds, and each GPU node's GPU count from its own evidence (the
    ``appliance_gpu`` facts). k3s names each node after its inventory host (``node-name``)."""
    entry = next(
        (e for e in manifest.files if e.kind == "file" and e.component == AIRGAP_FILE), None
    )
    airgap = read_airgap_images(release / entry.path) if entry is not None else []
    gpus = {
        host: len(((found.get("gpu") or {}).get("facts") or {}).get("gpus") or [])
        for host, found in evidence.items()
        if ((found.get("gpu") or {}).get("facts") or {}).get("gpus")
    }
    return K3sExpect.of(registry_images(manifest), airgap, gpus)


def _document(stdout: Any) -> dict[str, Any]:
    """kubectl's answer; Ansible may hand JSON text over already parsed."""
    document = stdout if isinstance(stdout, dict) else json.loads(str(stdout))
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _items(evidence: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(_document(evidence[kind]["stdout"]).get("items") or [])


def _state_problem(evidence: Mapping[str, Any] | None) -> str | None:
    if not evidence:
        return "no cluster state"
    for kind in _STATE:
        result = evidence.get(kind) or {}
        if int(result.get("rc", -1)) != 0:
            return f"{KUBECTL} get {kind}: {str(result.get('stderr') or 'no answer').strip()[:300]}"
        try:
            _document(result.get("stdout"))
        except ValueError:
            return f"{KUBECTL} get {kind} did not answer JSON"
    return None


def judge_k3s(host: str, evidence: Mapping[str, Any] | None, expect: K3sExpect) -> list[Check]:
    """Every check of the cluster as ``host`` (the k3s server) read it."""
    problem = _state_problem(evidence)
    if problem is not None or evidence is None:
        return [
            Check(
                host,
                "k3s: cluster state read",
                False,
                f"{problem}; is k3s running? (systemctl status k3s on {host})",
            ),
        ]
    planned = [doc for doc in yaml.safe_load_all(str(evidence.get("planned") or "")) if doc]
    nodes = _items(evidence, "nodes")
    pods = _items(evidence, "pods")
    checks = judge_nodes(host, nodes, expect)
    checks.extend(judge_pods(host, pods, planned, expect))
    checks.extend(judge_deployments(host, _items(evidence, "deployments"), pods, planned))
    checks.extend(judge_policies(host, _items(evidence, "networkpolicies"), planned))
    return checks


def _ready(node: Mapping[str, Any]) -> tuple[bool, str]:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            seen = f"Ready={condition.get('status')}"
            reason = condition.get("reason") or ""
            return condition.get("status") == "True", f"{seen} ({reason})" if reason else seen
    return False, "no Ready condition"


def judge_nodes(host: str, nodes: list[dict[str, Any]], expect: K3sExpect) -> list[Check]:
    checks = []
    if not nodes:
        checks.append(Check(host, "k3s nodes", False, "the cluster has no node; run install"))
    names = set()
    for node in nodes:
        name = str(node["metadata"]["name"])
        names.add(name)
        ready, seen = _ready(node)
        checks.append(
            Check(
                host,
                f"k3s node Ready: {name}",
                ready,
                seen
                if ready
                else f"{seen}; see journalctl -u k3s-agent (k3s on the server) "
                f"on {name} and {KUBECTL} describe node {name}",
            ),
        )
        checks.extend(_judge_gpus(host, node, (expect.gpus or {}).get(name)))
    for missing in sorted(set(expect.gpus or {}) - names):
        checks.append(
            Check(
                host,
                f"k3s node Ready: {missing}",
                False,
                f"GPU node {missing} has not joined the cluster; start k3s-agent there "
                "(appliance install)",
            ),
        )
    return checks


def _judge_gpus(host: str, node: Mapping[str, Any], facts: int | None) -> list[Check]:
    """The device plugin advertises exactly the GPUs the node's facts report (or, without the
    host's facts, the count the install labelled it with from them)."""
    name = str(node["metadata"]["name"])
    label = str((node["metadata"].get("labels") or {}).get(f"{LABEL_PREFIX}/gpu.count", ""))
    wanted = facts if facts is not None else (int(label) if label.isdigit() else None)
    if not wanted:
        return []
    advertised = str(((node.get("status") or {}).get("allocatable") or {}).get(GPU, "0"))
    ok = advertised == str(wanted)
    seen = f"{GPU} allocatable {advertised}, the node's facts report {wanted} GPUs"
    if not ok:
        seen += (
            f"; check the nvidia-device-plugin pod on {name} ({KUBECTL} -n kube-system logs "
            f"-l app.kubernetes.io/name=nvidia-device-plugin) and that k3s on {name} runs "
            "the NVIDIA runtime (default-runtime: nvidia)"
        )
    return [Check(host, f"k3s GPUs advertised: {name}", ok, seen)]


def _probe_path(deployment: Mapping[str, Any]) -> str | None:
    containers = deployment["spec"]["template"]["spec"].get("containers") or [{}]
    return ((containers[0].get("readinessProbe") or {}).get("httpGet") or {}).get("path")


def drift(plan: Any, live: Any, where: str) -> list[str]:
    """Where ``live`` departs from ``plan``: every field the plan sets must be there with its
    value; what the API server adds (defaults, status) is not drift. Scalars compare as text:
    the server gives quantities back as strings (``nvidia.com/gpu: 1`` -> ``"1"``), and leaves
    out empty lists and maps (``omitempty``)."""
    if plan in ([], {}) and live is None:
        return []
    if isinstance(plan, dict):
        if not isinstance(live, dict):
            return [f"{where}: {json.dumps(live)[:120]}, planned {json.dumps(plan)[:120]}"]
        return [
            d for key, value in plan.items() for d in drift(value, live.get(key), f"{where}.{key}")
        ]
    if isinstance(plan, list):
        if not isinstance(live, list) or len(live) != len(plan):
            return [f"{where}: {json.dumps(live)[:120]}, planned {json.dumps(plan)[:120]}"]
        return [
            d
            for i, (planned, got) in enumerate(zip(plan, live, strict=True))
            for d in drift(planned, got, f"{where}[{i}]")
        ]
    same = (
        str(plan).lower() == str(live).lower() if isinstance(plan, bool) else str(plan) == str(live)
    )
    return [] if same and live is not None else [f"{where}: {live!r}, planned {plan!r}"]


def unplanned(plan: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """What a live Deployment's spec adds to the plan that drift() cannot see (it reads only
    the fields the plan sets): a replica count of its own, a command in place of the image's,
    init containers, and host namespaces, privilege or host paths no plan gives."""
    found = []
    if str(live.get("replicas", 1)) != str(plan.get("replicas", 1)):
        found.append(
            f"spec.replicas: {live.get('replicas')!r}, planned {plan.get('replicas', 1)!r}"
        )
    plan_pod = (plan.get("template") or {}).get("spec") or {}
    live_pod = (live.get("template") or {}).get("spec") or {}
    where = "spec.template.spec"
    found += [f"{where}: {problem}" for problem in confinement_problems(live_pod, plan_pod)]
    if live_pod.get("initContainers") and not plan_pod.get("initContainers"):
        found.append(f"{where}.initContainers: not planned")
    planned_containers = {c.get("name"): c for c in plan_pod.get("containers") or []}
    for i, container in enumerate(live_pod.get("containers") or []):
        if "command" in container and "command" not in planned_containers.get(
            container.get("name"), {}
        ):
            found.append(f"{where}.containers[{i}].command: {container['command']!r}, not planned")
    return found


def judge_deployments(
    host: str,
    live: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    planned: list[dict[str, Any]],
) -> list[Check]:
    """Each planned model Deployment exists, is available, and gates readiness on the health
    path the plan gave it (its runtime's)."""
    by_name = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in live}
    checks = []
    for plan in planned:
        if plan.get("kind") != "Deployment":
            continue
        meta = plan["metadata"]
        name, namespace = meta["name"], meta.get("namespace", NAMESPACE)
        model = (meta.get("labels") or {}).get(f"{LABEL_PREFIX}/model", name)
        check = f"k3s model deployment available: {model}"
        found = by_name.get((namespace, name))
        if found is None:
            checks.append(
                Check(
                    host,
                    check,
                    False,
                    f"no Deployment {namespace}/{name}; "
                    "run appliance install (the server deploys its manifests)",
                )
            )
            continue
        wanted, path = _probe_path(plan), _probe_path(found)
        status = found.get("status") or {}
        available = int(status.get("availableReplicas") or 0)
        replicas = int(found["spec"].get("replicas", 1))
        problems = []
        if path != wanted:
            problems.append(f"readiness probe {path!r}, the runtime's health path is {wanted!r}")
        if available < replicas:
            mine = [
                p
                for p in pods
                if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == name
                and p["metadata"].get("namespace") == namespace
            ]
            states = "; ".join(f"{p['metadata']['name']}: {pod_health(p)[1]}" for p in mine)
            problems.append(
                f"{available} of {replicas} replicas available ({states or 'no pod'}); "
                f"{KUBECTL} -n {namespace} logs deploy/{name}"
            )
        checks.append(
            Check(
                host,
                check,
                not problems,
                "; ".join(problems) or f"{available}/{replicas} available, ready on {path}",
            ),
        )
        # The pod template as planned: image, security context, mounts, resources, probes.
        changed = drift(plan["spec"]["template"], found["spec"]["template"], "spec.template")
        changed += unplanned(plan["spec"], found["spec"])
        checks.append(
            Check(
                host,
                f"k3s model deployment as planned: {model}",
                not changed,
                "; ".join(changed[:5]) + f"; run appliance install to restore {namespace}/{name}"
                if changed
                else "its pod template holds every field of the plan",
            )
        )
    return checks


def _pruned(value: Any) -> Any:
    """``value`` without empty lists and maps: the API server leaves out an empty egress list
    (``omitempty``), which the plan writes to deny all egress."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def judge_policies(
    host: str, live: list[dict[str, Any]], planned: list[dict[str, Any]]
) -> list[Check]:
    """Each planned NetworkPolicy is in force as planned (k3s's embedded network policy
    controller enforces it; the server's config must not disable it)."""
    by_name = {(p["metadata"].get("namespace"), p["metadata"]["name"]): p for p in live}
    checks = []
    for plan in planned:
        if plan.get("kind") != "NetworkPolicy":
            continue
        name, namespace = plan["metadata"]["name"], plan["metadata"].get("namespace", NAMESPACE)
        check = f"k3s network policy: {namespace}/{name}"
        found = by_name.get((namespace, name))
        if found is None:
            seen = (
                "missing: the runtimes are reachable from any pod or host; run appliance "
                "install (the server deploys it from its manifests)"
            )
            checks.append(Check(host, check, False, seen))
        elif _pruned(found.get("spec")) != _pruned(plan["spec"]):
            seen = (
                f"differs from the plan: {json.dumps(found.get('spec'), sort_keys=True)[:300]}"
                "; run appliance install to restore it"
            )
            checks.append(Check(host, check, False, seen))
        else:
            sources = [
                peer.get("ipBlock", {}).get("cidr")
                for rule in plan["spec"].get("ingress") or []
                for peer in rule.get("from") or []
            ]
            checks.append(
                Check(host, check, True, f"ingress only from {', '.join(map(str, sources))}")
            )
    return checks
