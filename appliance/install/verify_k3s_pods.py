"""appliance verify on k3s: the images the cluster may run, and each pod's judgment (its images
held by the bundle and reached through the local registry, its health, and whether anyone
planned it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.install.verify_models import Check
from appliance.platform.airgap import AirgapImage, normalise
from appliance.registry import RegistryError, split_reference

KUBECTL = "k3s kubectl"


@dataclass(frozen=True)
class K3sExpect:
    """What the bundle holds and the hosts' facts say, for judging the cluster."""

    # Digests of the bundle's images (the reference's and, for an index, the platform's).
    held: frozenset[str]
    # Their repositories by upstream name (``ghcr.io/acme/app``): what the local registry holds.
    repositories: frozenset[str]
    airgap: tuple[AirgapImage, ...] = ()
    # GPU node -> the GPUs its facts report.
    gpus: Mapping[str, int] | None = None

    @classmethod
    def of(
        cls,
        images: Iterable[Mapping[str, Any]],
        airgap: Iterable[AirgapImage] = (),
        gpus: Mapping[str, int] | None = None,
    ) -> K3sExpect:
        """``images``: the manifest's images as ``appliance.registry.images`` lists them."""
        listed = list(images)
        held = {str(i["digest"]) for i in listed} | {split_reference(i["ref"])[2] for i in listed}
        repositories = {_repository(str(i["ref"])) for i in listed}
        return cls(frozenset(held), frozenset(repositories), tuple(airgap), dict(gpus or {}))

    def airgap_digests(self) -> frozenset[str]:
        return frozenset(d for image in self.airgap for d in image.digests)

    def airgap_refs(self) -> frozenset[str]:
        return frozenset(image.ref for image in self.airgap)


def _repository(ref: str) -> str:
    host, path, _digest = split_reference(ref)
    return f"{host}/{path}"


def _image_id(image_id: str) -> tuple[str | None, str]:
    """``repo@sha256:..``, ``docker-pullable://repo@sha256:..`` or ``sha256:..`` ->
    (repository by upstream name or None, digest)."""
    text = image_id.split("://", 1)[-1]
    if "@" not in text:
        return None, text
    try:
        return _repository(text), text.rpartition("@")[2]
    except RegistryError:
        return text.rpartition("@")[0], text.rpartition("@")[2]


def _planned_names(planned: list[dict[str, Any]], kind: str) -> set[tuple[str, str]]:
    return {
        (str(d["metadata"].get("namespace", "default")), str(d["metadata"]["name"]))
        for d in planned
        if d.get("kind") == kind
    }


def _owner(pod: Mapping[str, Any], planned: list[dict[str, Any]]) -> str | None:
    """The planned workload a pod belongs to (by its namespace and name label), if any."""
    meta = pod["metadata"]
    label = (meta.get("labels") or {}).get("app.kubernetes.io/name")
    # The label alone is anyone's to set: the pod must also be its controller's (a Deployment's
    # ReplicaSet, named after it, or the DaemonSet itself), not a bare pod dressed as one.
    owners = {
        (str(o.get("kind")), str(o.get("name")))
        for o in meta.get("ownerReferences") or []
        if o.get("controller")
    }
    for kind in ("Deployment", "DaemonSet"):
        for namespace, name in _planned_names(planned, kind):
            if meta.get("namespace") != namespace or label != name:
                continue
            if kind == "DaemonSet" and ("DaemonSet", name) in owners:
                return name
            if kind == "Deployment" and any(
                k == "ReplicaSet" and n.startswith(f"{name}-") for k, n in owners
            ):
                return name
    return None


def _containers(pod: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(container, spec image, status imageID) of every container, init containers too."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    ids = {
        s["name"]: str(s.get("imageID") or "")
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
        for s in status.get(key) or []
    }
    # Ephemeral containers too: `kubectl debug` adds one, of any image, to a running pod.
    return [
        (str(c["name"]), str(c.get("image", "")), ids.get(c["name"], ""))
        for key in _CONTAINER_KEYS
        for c in spec.get(key) or []
    ]


_CONTAINER_KEYS = ("initContainers", "containers", "ephemeralContainers")
# What lets a pod reach past its container into the node: none of it is in any plan except
# hostNetwork and the hostPath volumes a planned template names.
_HOST_FLAGS = ("hostPID", "hostIPC", "hostNetwork", "shareProcessNamespace")
# k3s's own coredns adds NET_BIND_SERVICE (its packaged manifests/coredns.yaml) to listen on 53.
_HARMLESS_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})


def _planned_template(
    pod: Mapping[str, Any], owner: str | None, planned: list[dict[str, Any]]
) -> Mapping[str, Any]:
    namespace = pod["metadata"].get("namespace")
    for doc in planned:
        meta = doc.get("metadata") or {}
        if meta.get("name") == owner and meta.get("namespace", "default") == namespace:
            return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {}


def confinement_problems(spec: Mapping[str, Any], plan: Mapping[str, Any]) -> list[str]:
    """What in a pod's (or a pod template's) ``spec`` reaches into its node beyond ``plan``
    (the planned template's pod spec; empty for a pod nobody planned)."""
    problems = [f"{key}: true" for key in _HOST_FLAGS if spec.get(key) and not plan.get(key)]
    for key in _CONTAINER_KEYS:
        for container in spec.get(key) or []:
            context = container.get("securityContext") or {}
            if context.get("privileged"):
                problems.append(f"{container.get('name')}: privileged")
            added = sorted(
                {str(c).upper() for c in (context.get("capabilities") or {}).get("add") or []}
                - _HARMLESS_CAPABILITIES
            )
            if added:
                problems.append(f"{container.get('name')}: adds {', '.join(added)}")
    planned_paths = {
        (v.get("hostPath") or {}).get("path") for v in plan.get("volumes") or [] if "hostPath" in v
    }
    for volume in spec.get("volumes") or []:
        path = (volume.get("hostPath") or {}).get("path")
        if path is not None and path not in planned_paths:
            problems.append(f"volume {volume.get('name')}: hostPath {path}")
    return problems


def _image_problems(containers: list[tuple[str, str, str]], expect: K3sExpect) -> list[str]:
    held = expect.held | expect.airgap_digests()
    problems = []
    for name, image, image_id in containers:
        if "@" in image:
            try:
                digest = split_reference(image)[2]
            except RegistryError:
                digest = ""
            if digest not in held:
                problems.append(f"{name}: {image} is a digest the bundle does not hold")
        elif normalise(image) not in expect.airgap_refs():
            problems.append(f"{name}: {image} is a tag, not a digest the bundle holds")
        if image_id and _image_id(image_id)[1] not in held:
            problems.append(f"{name}: runs {image_id}, a digest the bundle does not hold")
    return problems


def _origin_problems(containers: list[tuple[str, str, str]], expect: K3sExpect) -> list[str]:
    """An image the node reports under a repository the local registry does not hold (nor the
    airgap tarball) came from somewhere else."""
    known = expect.repositories | {r.rpartition(":")[0] for r in expect.airgap_refs()}
    problems = []
    for name, _image, image_id in containers:
        repository, _digest = _image_id(image_id) if image_id else (None, "")
        if repository is not None and repository not in known:
            problems.append(
                f"{name}: {image_id} is from {repository}, which neither the local registry "
                "nor k3s's airgap images hold"
            )
    return problems


def pod_health(pod: Mapping[str, Any]) -> tuple[bool, str]:
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    if phase == "Succeeded":
        return True, "Succeeded"
    problems = []
    for state in status.get("containerStatuses") or []:
        waiting = (state.get("state") or {}).get("waiting")
        if waiting:
            problems.append(
                f"{state['name']} {waiting.get('reason')} after {state.get('restartCount', 0)} "
                f"restarts: {str(waiting.get('message') or '')[:200]}".rstrip(": ")
            )
        elif not state.get("ready"):
            problems.append(f"{state['name']} not ready")
    if phase != "Running" and not problems:
        problems.append(f"phase {phase}: {status.get('reason') or status.get('message') or ''}")
    return not problems and phase == "Running", "; ".join(
        problems
    ) or "Running, every container ready"


def judge_pods(
    host: str, pods: list[dict[str, Any]], planned: list[dict[str, Any]], expect: K3sExpect
) -> list[Check]:
    checks = []
    for pod in pods:
        meta = pod["metadata"]
        where = f"{meta.get('namespace')}/{meta['name']}"
        node = (pod.get("spec") or {}).get("nodeName") or "no node"
        containers = _containers(pod)
        owner = _owner(pod, planned)
        # k3s's own pods run only airgap images; anything else nobody planned.
        k3s_own = bool(
            meta.get("namespace") == "kube-system"
            and containers
            and all(normalise(image) in expect.airgap_refs() for _n, image, _i in containers)
            and any(o.get("controller") for o in meta.get("ownerReferences") or [])
        )
        if owner is None and not k3s_own:
            checks.append(
                Check(
                    host,
                    f"k3s pod planned: {where}",
                    False,
                    f"on {node}; no workload the installer planned (nor k3s's own) owns it: "
                    f"{KUBECTL} -n {meta.get('namespace')} describe pod {meta['name']}, "
                    "then delete what created it",
                ),
            )
        # k3s's own images (busybox among them) are as able as any to mount the node's root.
        reach = confinement_problems(pod.get("spec") or {}, _planned_template(pod, owner, planned))
        checks.append(
            Check(
                host,
                f"k3s pod confined: {where}",
                not reach,
                "; ".join(reach) + f" (on {node}), which no plan gives it; "
                f"{KUBECTL} -n {meta.get('namespace')} get pod {meta['name']} -o yaml, then "
                "delete what created it"
                if reach
                else "no host namespace, privilege or host path beyond its plan",
            ),
        )
        problems = _image_problems(containers, expect)
        checks.append(
            Check(
                host,
                f"k3s pod images held by the bundle: {where}",
                not problems,
                "; ".join(problems) + f" (on {node}); run only images of the bundle, "
                "by digest (appliance install re-deploys the planned ones)"
                if problems
                else ", ".join(sorted({i for _n, i, _d in containers})),
            ),
        )
        origin = _origin_problems(containers, expect)
        checks.append(
            Check(
                host,
                f"k3s pod images from the local registry: {where}",
                not origin,
                "; ".join(origin) + f" (on {node}); check registries.yaml on {node}"
                if origin
                else "every image from the local registry or k3s's airgap images",
            ),
        )
        healthy, seen = pod_health(pod)
        checks.append(
            Check(
                host,
                f"k3s pod running: {where}",
                healthy,
                seen
                if healthy
                else f"{seen} (on {node}); {KUBECTL} -n "
                f"{meta.get('namespace')} logs {meta['name']} --previous",
            ),
        )
    return checks
