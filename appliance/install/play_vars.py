"""What the play is given (appliance install's extravars): the topology planned for the
inventory and the bundle, and each variable the roles read from the installer rather than from
their own defaults (the release, its files and models, the registry's address, NVIDIA's driver,
what an upgrade runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.bundle.manifest import Manifest
from appliance.errors import InstallError, InventoryError
from appliance.install.inventory import Inventory
from appliance.install.topology import Registry as RegistryPlan
from appliance.install.topology import Topology, plan
from appliance.mirrors import upstream_registries
from appliance.platform.plan import harbor_plan
from appliance.registry import RegistryError
from appliance.registry import images as registry_images
from appliance.roles import role_defaults

if TYPE_CHECKING:  # the options are install's; install imports this module
    from appliance.install import InstallOptions


def plan_topology(
    inventory: Inventory, manifest: Manifest, site_models: list[dict[str, Any]] | None = None
) -> Topology:
    """The topology of ``inventory`` for ``manifest``'s stack and models, and the site's."""
    topology = plan(
        hosts=inventory.hosts,
        depot=inventory.depot,
        gpu_nodes=inventory.gpu_nodes,
        host_vars=inventory.host_vars,
        stack=manifest.stack,
        models=manifest.models() + (site_models or []),
        nvidia=nvidia_vars(manifest),
        images=_registry_images(manifest),
    )
    # An S3 store (object_store: minio) serves every node by digest; the filesystem store that
    # holds site models is the depot's own directory.
    site_names = {m["name"] for m in site_models or []} if topology.object_store is None else set()
    for host, host_plan in topology.hosts.items():
        runtime = host_plan.runtime
        if runtime is None or host_plan.depot:
            continue
        away = sorted(site_names & set(runtime.models))
        if away:
            raise InventoryError(
                f"host {host} would serve the site model(s) {', '.join(away)}, but the "
                "filesystem store that holds site models is on the depot alone",
                hint=f"list only the bundle's models in runtime_{runtime.kind}_models of {host}, "
                "and serve site models on the depot (a member of gpu_nodes), or use the S3 store "
                "(object_store: minio), which every node fetches from; nothing was changed",
            )
    return topology


def _registry_images(manifest: Manifest) -> list[dict[str, Any]]:
    """The images a registry in the stack is seeded with (none without a registry)."""
    if manifest.stack.get("registry", "none") == "none":
        return []
    try:
        return registry_images(manifest)
    except RegistryError as error:
        raise InstallError(
            f"release {manifest.release}: {error}",
            hint="rebuild the bundle from a spec whose images name their registry by DNS name "
            "or IPv4 address; nothing was changed",
        ) from None


def nvidia_vars(manifest: Manifest) -> dict[str, Any] | None:
    """The manifest's NVIDIA section as plain data (None: the bundle carries no driver)."""
    section = manifest.nvidia
    return None if section is None else dict(section.model_dump(mode="json"))


def play_extravars(
    options: InstallOptions,
    manifest: Manifest,
    release_dir: Path,
    local_release: Path,
    topology: Topology,
) -> dict[str, Any]:
    variables: dict[str, Any] = {
        "appliance_root": str(options.root),
        "appliance_release": manifest.release,
        "appliance_name": manifest.name,
        "appliance_bundle_dir": str(release_dir),
        "appliance_bundle_bytes": manifest.total_size(),
        # Copied from this machine to every host; the depot's own copy may be remote.
        "appliance_repo_key": str(local_release / manifest.repo.key) if manifest.repo else "",
        "appliance_packages": manifest.packages,
        "appliance_stack": manifest.stack,
        # Who does what, where: computed once here (topology.py); the roles read it.
        "appliance_topology": topology.as_vars(),
        # What the runtime and gateway roles lay out from the bundle, each file by digest.
        "appliance_models": manifest.models(),
        "appliance_wheel_sets": manifest.wheel_sets(),
        "appliance_files": manifest.plain_files(),
        # The upstream registries of the signed manifest's images: one mirror rule each
        # (container_engines role, k3s's registries.yaml), and no other.
        "appliance_image_registries": upstream_registries(
            c.name for c in manifest.components if c.kind == "image"
        ),
    }
    if topology.registry is not None:
        variables.update(registry_vars(topology.registry))
    if topology.registry is not None and topology.registry.kind == "harbor":
        # harbor.yml and the projects, planned here; the role adds the passwords on the depot.
        platform = variables.setdefault("appliance_platform", {})
        platform["harbor"] = harbor_plan(topology, [i["ref"] for i in topology.registry.images])
    if options.internal_cidrs:
        variables["appliance_internal_cidrs"] = list(options.internal_cidrs)
    if options.exact_versions:
        # Each package of the bundle's repository at its exact version: what an upgrade or a
        # rollback moves installed packages to, up or down (local_repo role).
        variables["appliance_exact_versions"] = True
        variables["appliance_package_versions"] = {
            c.name: c.version for c in manifest.components if c.kind == "deb" and c.version
        }
    if options.run_roles is not None:
        variables["appliance_run_roles"] = sorted(options.run_roles)
    nvidia = nvidia_vars(manifest)
    if nvidia is not None:
        variables["appliance_nvidia"] = nvidia
        variables["appliance_allow_reboot"] = options.allow_reboot
        variables["nvidia_driver_replace"] = options.replace_driver
    return variables


def registry_vars(registry: RegistryPlan) -> dict[str, Any]:
    """What every role on every host needs to pull from the registry (the container engines'
    mirrors): its address, and where each host keeps the CA certificate and the pull identity's
    root-only auth file (the registry role's defaults name both paths)."""
    defaults = role_defaults("registry")
    return {
        "appliance_registry_host": registry.address,
        "appliance_registry_port": registry.port,
        "appliance_registry_ca_cert": defaults["registry_ca_cert"],
        "appliance_registry_pull_auth": defaults["registry_pull_auth"],
        "appliance_registry_upstreams": list(registry.upstreams),
    }
