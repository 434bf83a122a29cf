"""What a bundle holds, read from its manifest (and SBOM), for people and for automation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.bundle import layout
from appliance.bundle.manifest import Manifest, parse_manifest
from appliance.bundle.sources import TarSource, open_archive
from appliance.errors import BundleLayoutError


def read_manifest(path: Path) -> Manifest:
    """The manifest of a bundle directory, packed tar or parts index, NOT verified (inspect
    without a key; a release this installer staged itself). ``verify.open_bundle`` verifies."""
    if path.is_dir():
        manifest_path = path / layout.MANIFEST
        if not manifest_path.is_file():
            raise BundleLayoutError(
                f"{path} has no {layout.MANIFEST}", hint="is this an appliance bundle?"
            )
        return parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    with open_archive(path) as stream:
        data = TarSource(stream, str(path)).read_trust(signed=False)[layout.MANIFEST]
    return parse_manifest(data, f"{path}:{layout.MANIFEST}")


# What an operator must know about a stack choice, said by inspect and by build-bundle.
_MINIO = (
    "object_store minio: MinIO stopped publishing binaries in 2025 and is licensed AGPL-3.0; "
    "this bundle carries the last published server release ({version}, the spec's files: "
    "entry 'minio'). The store is used through plain S3 only, so SeaweedFS, Garage or Ceph "
    "RGW can replace it."
)


def stack_notes(stack: dict[str, Any], versions: dict[str, str | None]) -> list[str]:
    """Notes on ``stack``'s choices; ``versions``: the bundle's files by name."""
    notes = []
    if stack.get("object_store") == "minio":
        notes.append(_MINIO.format(version=versions.get("minio") or "version not recorded"))
    return notes


def summary(manifest: Manifest) -> dict[str, Any]:
    kinds: dict[str, dict[str, int]] = {}
    for entry in manifest.by_path().values():
        slot = kinds.setdefault(entry.kind, {"files": 0, "bytes": 0})
        slot["files"] += 1
        slot["bytes"] += entry.size
    sizes: dict[str, int] = {}
    for entry in manifest.files:
        sizes[entry.component] = sizes.get(entry.component, 0) + entry.size
    models = {
        c.name: {**c.model_dump(), "files": 0, "bytes": 0}
        for c in manifest.components
        if c.kind == "model"
    }
    for entry in manifest.files:
        if entry.kind == "model" and entry.component in models:
            models[entry.component]["files"] += 1
            models[entry.component]["bytes"] += entry.size
    required_by = manifest.required_by()
    components = []
    for component in manifest.components:
        item = {**component.model_dump(), "bytes": sizes.get(component.name, 0)}
        if component.kind == "deb" and component.name.partition(":")[0] in required_by:
            item["required_by"] = required_by[component.name.partition(":")[0]]
        components.append(item)
    carried = {c.name.partition(":")[0] for c in manifest.components if c.kind == "deb"}
    return {
        "name": manifest.name,
        "release": manifest.release,
        "created": manifest.created,
        "appliance_version": manifest.appliance_version,
        "spec_sha256": manifest.spec_sha256,
        "target": manifest.target.model_dump(),
        "stack": manifest.stack,
        "notes": stack_notes(
            manifest.stack, {c.name: c.version for c in manifest.components if c.kind == "file"}
        ),
        "files": len(manifest.by_path()),
        "bytes": manifest.total_size(),
        "kinds": kinds,
        "repo": manifest.repo.model_dump() if manifest.repo else None,
        "components": components,
        # {role: [package]}: what the play's roles install, and which of those this bundle
        # does not carry (its spec had no packages section: the hosts must have them).
        "role_packages": manifest.role_packages,
        "not_carried": {p: roles for p, roles in required_by.items() if p not in carried},
        "models": sorted(models.values(), key=lambda m: m["name"]),
        # The NVIDIA driver the GPU hosts install: version, source, kernel ABIs.
        "nvidia": manifest.nvidia.model_dump() if manifest.nvidia else None,
    }
