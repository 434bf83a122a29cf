"""The play's ``appliance_platform`` (appliance/platform/plan.py) for the bundle's stack: under
``orchestrator: k3s``, what every k3s node's files say and what its server deploys.

The runtimes become one Deployment per model, of the bundle's runtime image by its digest, on
the node and at the address and port the topology planned for that model: on the node's own
network, so the gateway (systemd on its host, as without k3s) reaches each at the same address,
and the host firewall that admits the gateway's address alone guards it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from appliance.bundle.manifest import Manifest
from appliance.errors import InstallError
from appliance.install.topology import Topology
from appliance.platform.images import DEVICE_PLUGIN_IMAGE_NAME, find_image, runtime_image
from appliance.platform.k3s import LocalRegistry
from appliance.platform.plan import k3s_plan, workloads
from appliance.roles import role_defaults


def platform_vars(
    manifest: Manifest,
    topology: Topology,
    gpu_nodes: Sequence[str],
    site_models: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any] | None:
    """``appliance_platform`` (None: the stack runs no container platform). ``site_models``:
    the site's models the topology also placed (their files name what each workload serves)."""
    if manifest.stack.get("orchestrator") != "k3s":
        return None
    where = f"bundle {manifest.name} {manifest.release}"
    registry = topology.registry
    if registry is None:  # check_can_install refused it already; kept for the type checker
        raise InstallError(f"{where}: k3s needs a registry", hint="nothing was changed")
    refs = [c.name for c in manifest.components if c.kind == "image"]
    runtime = str(manifest.stack.get("runtime", "llamacpp"))
    image = runtime_image(refs, runtime)
    models = [*manifest.models(), *site_models]
    if image is None and any(h.runtime and h.runtime.models for h in topology.hosts.values()):
        raise InstallError(
            f"{where}: stack.orchestrator is k3s but the bundle carries no image of the "
            f"{runtime} runtime for its models to run as",
            hint="build the bundle from a spec that lists the runtime's image under images: "
            "(the spec check names the repository); nothing was changed",
        )
    # GPUs are requested only where the bundle carries the driver and the device plugin
    # advertises them.
    plugin = find_image(refs, DEVICE_PLUGIN_IMAGE_NAME) if manifest.nvidia is not None else None
    gpu = list(gpu_nodes) if plugin is not None else []
    gpus: dict[str, int] = {}
    for host in gpu:
        runtime_plan = topology.hosts[host].runtime
        gpus.update(dict.fromkeys(runtime_plan.models if runtime_plan else (), 1))
    loads = workloads(topology, models, {runtime: image} if image else {}, gpus, host_network=True)
    local = LocalRegistry(
        address=f"{registry.address}:{registry.port}",
        ca_file=str(role_defaults("registry")["registry_ca_cert"]),
        # The pull identity's password is read on each host (the k3s role); never here.
        username="",
        password="",
    )
    return {
        "k3s": k3s_plan(
            topology,
            images=refs,
            registry=local,
            workloads=loads,
            device_plugin_image=plugin,
            gpu_nodes=gpu,
        )
    }
