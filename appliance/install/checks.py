"""What install checks about a bundle before any host changes, beyond its signature."""

from __future__ import annotations

from appliance.bundle.manifest import Manifest
from appliance.errors import InstallError
from appliance.roles import required_packages
from appliance.spec.k3s import K3S_FILES, K3S_REGISTRIES, k3s_gpu_problem
from appliance.spec.models import HARBOR_FILE, INSTALLABLE, MINIO_FILE


def check_can_install(manifest: Manifest) -> None:
    """Refuse a bundle this installer cannot take to the end: a stack choice it does not
    install, or an OS package the play's roles install that the bundle does not carry."""
    where = f"bundle {manifest.name} {manifest.release}"
    for part, works in INSTALLABLE.items():
        chosen = manifest.stack.get(part)
        if chosen is not None and chosen not in works:
            raise InstallError(
                f"{where}: stack.{part} is '{chosen}', which this release cannot install (it "
                f"installs: {', '.join(works)})",
                hint="build the bundle from a spec whose stack this release installs; nothing "
                "was changed",
            )
    files = {e["name"] for e in manifest.plain_files()}
    if manifest.stack.get("object_store") == "minio" and MINIO_FILE not in files:
        raise InstallError(
            f"{where}: stack.object_store is minio but the bundle carries no file named "
            f"'{MINIO_FILE}' (the server binary the object_store role installs)",
            hint="build the bundle from a spec with the MinIO server under files: (see "
            "examples/production.yaml); nothing was changed",
        )
    if manifest.stack.get("registry") == "harbor" and HARBOR_FILE not in files:
        raise InstallError(
            f"{where}: stack.registry is harbor but the bundle carries no file named "
            f"'{HARBOR_FILE}' (Harbor's offline installer, which the harbor role runs)",
            hint="build the bundle from a spec with Harbor's offline installer under files:; "
            "nothing was changed",
        )
    if manifest.stack.get("orchestrator") == "k3s":
        _check_k3s(manifest, files, where)
    if manifest.stack.get("registry", "none") != "none" and not any(
        c.kind == "image" for c in manifest.components
    ):
        raise InstallError(
            f"{where}: stack.registry is {manifest.stack['registry']} but the bundle carries no "
            "container images to seed it with",
            hint="build the bundle from a spec that lists its images under images:; nothing was "
            "changed",
        )
    nvidia = manifest.nvidia
    needed = required_packages(
        manifest.stack,
        bool(manifest.models()),
        gpu=nvidia is not None,
        toolkit=bool(nvidia is not None and nvidia.container_toolkit),
    )
    if not needed:
        return
    held = {c.name.partition(":")[0] for c in manifest.components if c.kind == "deb"}
    missing = {package: roles for package, roles in needed.items() if package not in held}
    if not missing:
        return
    listing = "; ".join(f"{p} (required by role {', '.join(r)})" for p, r in missing.items())
    if manifest.repo is None:
        raise InstallError(
            f"{where} carries no OS packages, but the roles install {listing}",
            hint="build the bundle from a spec with a packages section (packages.sources: the "
            "Debian archive); build-bundle adds the roles' packages itself. Nothing was changed",
        )
    raise InstallError(
        f"{where} lacks OS packages the roles install: {listing}",
        hint="build the bundle again with this release's build-bundle, which adds every role's "
        "packages to the closure (or list them in packages.install). Nothing was changed",
    )


def _check_k3s(manifest: Manifest, files: set[str], where: str) -> None:
    missing = [name for name in K3S_FILES if name not in files]
    if missing:
        raise InstallError(
            f"{where}: stack.orchestrator is k3s but the bundle carries no file named "
            + ", ".join(f"'{name}' ({K3S_FILES[name]})" for name in missing),
            hint="build the bundle from a spec with k3s's files under files: (see the README, "
            "Container platform); nothing was changed",
        )
    refs = [c.name for c in manifest.components if c.kind == "image"]
    toolkit = manifest.nvidia is not None and bool(manifest.nvidia.container_toolkit)
    if manifest.nvidia is not None and (problem := k3s_gpu_problem(toolkit, refs)):
        raise InstallError(
            f"{where}: {problem}",
            hint="build the bundle again from a spec that does so; nothing was changed",
        )
    registry = manifest.stack.get("registry", "none")
    if registry not in K3S_REGISTRIES:
        raise InstallError(
            f"{where}: stack.orchestrator is k3s but stack.registry is {registry}: nothing "
            "would serve the workloads' images",
            hint=f"build the bundle with stack.registry one of {', '.join(K3S_REGISTRIES)}; "
            "nothing was changed",
        )
