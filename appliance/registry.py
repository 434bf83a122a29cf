"""The container registry, from the installer's side: the layout the registry role seeds, the
images a bundle brings, and the storage they need.

The layout and the client live in the registry role's module_utils (``appliance_registry``),
which the depot runs with python3 alone; this module imports that very file, so the spec check,
the installer's plan, ``appliance verify`` and the role agree on every repository name. Read its
docstring for the layout (``<registry>/<upstream host>/<path>@sha256:...``).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from appliance.bundle.manifest import Manifest
from appliance.roles import ROLES_DIR

MODULE_UTILS = ROLES_DIR / "registry" / "module_utils"

# Room the registry needs beyond the images' blobs: its link files and upload state are small,
# and an upload lands beside the blob before it is moved into place, so a margin per image set
# plus a fixed amount for metadata covers it.
STORAGE_MARGIN = 0.05
STORAGE_METADATA_BYTES = 32 * 1024 * 1024


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODULE_UTILS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_registry = _load("appliance_registry")

if TYPE_CHECKING:
    from appliance_registry import (
        DOCKER_HUB,
        Client,
        RegistryError,
        audit,
        auth_file,
        namespace,
        read_auth_file,
        repository,
        seed_image,
        split_reference,
        upstream_host,
    )
else:
    globals().update({name: getattr(_registry, name) for name in _registry.__all__})


def images(manifest: Manifest) -> list[dict[str, Any]]:
    """Each image of the signed manifest: its reference, the digest the bundle holds (a
    platform's manifest when the spec pinned an index), its repository in the local registry,
    and its blobs (sha256 hex -> size), as the registry role seeds and checks them."""
    blobs: dict[str, dict[str, int]] = {}
    for entry in manifest.files:
        if entry.kind == "image":
            blobs.setdefault(entry.component, {})[entry.sha256] = entry.size
    return [
        {
            "ref": component.name,
            "digest": component.version,
            "repository": repository(component.name),
            "blobs": blobs.get(component.name, {}),
        }
        for component in sorted(manifest.components, key=lambda c: c.name)
        if component.kind == "image"
    ]


def upstreams(refs: list[str]) -> list[dict[str, str]]:
    """One mirror rule per upstream registry: its host and the namespace that holds its images."""
    hosts = sorted({upstream_host(ref) for ref in refs})
    return [{"host": host, "namespace": namespace(host)} for host in hosts]


def storage_bytes(found: list[dict[str, Any]]) -> int:
    """Bytes the registry's storage must have for ``found`` (each blob once, shared layers too),
    with the margin for its metadata."""
    unique: dict[str, int] = {}
    for image in found:
        unique.update(image["blobs"])
    total = sum(unique.values())
    return total + math.ceil(total * STORAGE_MARGIN) + STORAGE_METADATA_BYTES


__all__ = [
    "DOCKER_HUB",
    "STORAGE_MARGIN",
    "STORAGE_METADATA_BYTES",
    "Client",
    "RegistryError",
    "audit",
    "auth_file",
    "images",
    "namespace",
    "read_auth_file",
    "repository",
    "seed_image",
    "split_reference",
    "storage_bytes",
    "upstream_host",
    "upstreams",
]
