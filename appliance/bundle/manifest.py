"""The bundle manifest: one canonical JSON document that lists every file with its digest.

The signature covers the manifest; the manifest covers everything else. Canonical form (sorted
keys, no whitespace, UTF-8) makes the bytes, and so the signature, depend only on content.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from appliance.errors import BundleCorruptError

MANIFEST_SCHEMA: Literal[1] = 1

FileKind = Literal[
    "file",
    "deb",
    "wheel",
    "model",
    "image",
    "image-index",
    "repo-index",
    "ansible-content",
    "installer",
    "sbom",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Frozen):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    kind: FileKind
    component: str
    # The artifact's own file name where tools need it (wheels for pip, debs for people).
    name: str | None = None
    # In a delta bundle: not shipped, the base bundle holds this file.
    from_base: bool = False


class Component(_Frozen):
    name: str
    kind: str
    version: str | None = None
    source: str | None = None
    # A model's task when it is not chat (the spec's models[].task): "embedding". Left out of
    # the JSON when unset, so manifests of chat models stay as they were, byte for byte.
    task: str | None = None

    @model_serializer(mode="wrap")
    def _without_unset_task(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("task") is None:
            data.pop("task", None)
        return data


class Target(_Frozen):
    os: str
    arch: str


class RepoInfo(_Frozen):
    path: str
    key: str
    fingerprint: str


class NvidiaDriver(_Frozen):
    """The NVIDIA driver the bundle's repository carries: one version for every package of it."""

    source: Literal["debian", "nvidia-repo"]
    version: str  # the upstream driver version, e.g. 535.309.01 (no Debian revision)
    branch: str  # its first component, e.g. 535
    modules: Literal["proprietary", "open"]
    # The DKMS source package the host builds the kernel module from.
    dkms_package: str
    # Every package of the driver set in the repository with its exact Debian version: what the
    # host pins (apt preferences) and holds so that a later apt run cannot drift them apart.
    packages: dict[str, str]


class KernelAbi(_Frozen):
    """A kernel ABI the bundle can build the NVIDIA module for: its headers are in the repo."""

    abi: str  # as `uname -r` prints it, e.g. 6.1.0-57-amd64
    headers: str  # the package name, linux-headers-<abi>
    version: str  # the headers package's Debian version (the kernel's source version)


class NvidiaInfo(_Frozen):
    """What the GPU hosts install from the bundle's repository for ``nvidia:`` in the spec."""

    driver: NvidiaDriver
    kernel_abis: list[KernelAbi]
    # The packages the nvidia_driver role installs (their dependencies are in the repo too).
    install: list[str]
    # Fabric manager and NSCQ packages ({name: version}); empty when the bundle carries none.
    fabricmanager: dict[str, str] = Field(default_factory=dict)
    # The NVIDIA Container Toolkit's packages ({name: version}); empty when not carried.
    container_toolkit: dict[str, str] = Field(default_factory=dict)

    def abis(self) -> list[str]:
        return [kernel.abi for kernel in self.kernel_abis]


class BaseRef(_Frozen):
    """The bundle a delta builds on, pinned by the sha256 of its manifest."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str
    release: str


class Manifest(_Frozen):
    schema_version: Literal[1] = MANIFEST_SCHEMA
    name: str
    release: str
    created: str
    appliance_version: str
    spec_sha256: str
    target: Target
    stack: dict[str, str]
    components: list[Component]
    files: list[FileEntry]
    repo: RepoInfo | None = None
    # The OS packages the spec asks for (their dependencies are in the repo too).
    packages: list[str] = Field(default_factory=list)
    # The OS packages the play's roles install, by role ({role: [package]}); build-bundle adds
    # them to the repository's closure. Absent from manifests written before roles declared them.
    role_packages: dict[str, list[str]] = Field(default_factory=dict)
    base: BaseRef | None = None
    # Release order (the spec's ``sequence`` and ``upgrades_from``), signed with the rest: install
    # refuses an older release than the current one, and an upgrade from a release not listed.
    # Absent from manifests written before releases were ordered: such a release is unordered.
    sequence: int | None = Field(default=None, ge=1)
    upgrades_from: list[str] = Field(default_factory=list)
    # The NVIDIA driver set for the spec's ``nvidia:`` section; None when the bundle has none.
    nvidia: NvidiaInfo | None = None

    def canonical(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    def by_path(self) -> dict[str, FileEntry]:
        return {entry.path: entry for entry in self.files}

    def shipped(self) -> dict[str, FileEntry]:
        """The files this bundle carries itself (all of them, unless it is a delta)."""
        return {entry.path: entry for entry in self.files if not entry.from_base}

    def total_size(self) -> int:
        """Bytes on disk: each distinct path once."""
        return sum(entry.size for entry in self.by_path().values())

    def required_by(self) -> dict[str, list[str]]:
        """Each role-required OS package with the roles that need it."""
        roles: dict[str, list[str]] = {}
        for role, packages in sorted(self.role_packages.items()):
            for package in packages:
                roles.setdefault(package, []).append(role)
        return roles

    def models(self) -> list[dict[str, Any]]:
        """Each model with its files and digest, as the install roles consume them."""
        by_model: dict[str, list[FileEntry]] = {}
        for entry in self.files:
            if entry.kind == "model":
                by_model.setdefault(entry.component, []).append(entry)
        found = []
        for component in sorted(self.components, key=lambda c: c.name):
            if component.kind != "model":
                continue
            files = sorted(by_model.get(component.name, []), key=lambda e: e.name or e.path)
            found.append(
                {
                    "name": component.name,
                    "version": component.version,
                    "format": _model_format(component, files),
                    "task": component.task or "chat",
                    "source": component.source,
                    "digest": model_digest(files),
                    "files": [
                        {
                            "name": e.name or e.path,
                            "path": e.path,
                            "sha256": e.sha256,
                            "size": e.size,
                        }
                        for e in files
                    ],
                }
            )
        return found

    def plain_files(self) -> list[dict[str, Any]]:
        """The spec's ``files:`` entries (runtime releases such as Ollama's), for the roles."""
        return [
            {
                "name": e.component,
                "file_name": e.name or e.path.rsplit("/", 1)[-1],
                "path": e.path,
                "sha256": e.sha256,
                "size": e.size,
            }
            for e in sorted(self.files, key=lambda e: e.component)
            if e.kind == "file"
        ]

    def wheel_sets(self) -> dict[str, list[dict[str, Any]]]:
        """Wheels by set (``installer`` and the spec's ``wheels[].name``), with file names."""
        sets: dict[str, list[dict[str, Any]]] = {}
        for entry in sorted(self.files, key=lambda e: e.name or e.path):
            if entry.kind != "wheel":
                continue
            set_name = entry.component.rpartition(":")[2]
            sets.setdefault(set_name, []).append(
                {"name": entry.name, "path": entry.path, "sha256": entry.sha256, "size": entry.size}
            )
        return sets


def _model_format(component: Component, files: list[FileEntry]) -> str | None:
    """gguf, safetensors or ollama: what a runtime needs to know to serve the model."""
    if (component.source or "").startswith("ollama://"):
        return "ollama"
    if component.version in {"gguf", "safetensors"}:
        return component.version  # a local model records its declared format as its version
    names = [e.name or e.path for e in files]
    if any(n.endswith(".gguf") for n in names):
        return "gguf"
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    return None


def model_digest(files: list[FileEntry]) -> str:
    """One digest that names a model's exact bytes, the one the audit log records.

    A single-file model (a GGUF) is named by that file's sha256, which operators can check with
    sha256sum; a model of several files by the sha256 of its sha256sum-style listing
    (``<sha256>  <relative path>`` lines, sorted by path), so renaming a file changes it too.
    """
    return files_digest([(e.name or e.path, e.sha256) for e in files])


def files_digest(files: list[tuple[str, str]]) -> str:
    """``model_digest`` of (relative path, sha256) pairs: site models are named the same way."""
    if len(files) == 1:
        return f"sha256:{files[0][1]}"
    listing = "".join(f"{sha256}  {name}\n" for name, sha256 in sorted(files))
    return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"


def canonical_json(document: Any) -> bytes:
    return (
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    ).encode()


def parse_manifest(data: bytes, source: str) -> Manifest:
    """The manifest in ``data``, valid by its schema and by ``layout.check_manifest_paths``
    (safe paths and names, none twice): every reader gets its manifests from here."""
    from appliance.bundle import layout  # layout names Manifest in its types

    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleCorruptError(
            f"{source}: not a valid bundle manifest ({exc.error_count()} problems, first: "
            f"{where}: {first['msg']})",
            hint="the manifest is damaged or from an incompatible appliance release",
        ) from exc
    layout.check_manifest_paths(manifest, source)
    return manifest
