"""The spec's stack (which implementation fills each role of the appliance, and which of them
this release installs), its targets, and the files a stack choice needs in ``files:``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from appliance.spec.checks import err
from appliance.spec.common import StrictModel
from appliance.spec.k3s import k3s_files_missing


class Target(StrictModel):
    """An OS and CPU architecture the bundle is built for."""

    os: Literal["debian-12"] = Field(description="target operating system")
    arch: Literal["amd64", "arm64"] = Field(description="CPU architecture, Debian naming")


# The spec's files: entry that carries the MinIO server binary for object_store: minio (the
# object_store role's object_store_file). MinIO stopped publishing binaries in 2025 and is
# AGPL-3.0: the bundle carries the last published release, pinned like any other file.
MINIO_FILE = "minio"
# The files: entry that carries Harbor's offline installer for registry: harbor (the harbor
# role's harbor_file): every Harbor image, install.sh and prepare, pinned like any other file.
HARBOR_FILE = "harbor-offline-installer"

# What this release installs for each role of the stack. The other choices are the ones the
# design names for later releases (a registry, an object store, k3s): the spec's vocabulary
# knows them, and validation refuses them until a release can install them, instead of letting
# an install fail halfway.
INSTALLABLE: dict[str, tuple[str, ...]] = {
    "registry": ("none", "distribution", "harbor"),
    "object_store": ("filesystem", "minio"),
    "orchestrator": ("systemd", "k3s"),
    "runtime": ("llamacpp", "vllm", "ollama"),
}


def _installable(field: str) -> Any:
    def check(value: str) -> str:
        works = INSTALLABLE[field]
        if value not in works:
            raise err(
                "not_installable",
                "'{value}' cannot be installed by this release of appliance; the choices that "
                "install are: {works}",
                value=value,
                works=", ".join(works),
            )
        return value

    return AfterValidator(check)


# The runtimes whose role serves a model with task: embedding: llama.cpp with its embedding
# settings (runtime_llamacpp), Ollama natively (/v1/embeddings for an embedding model). The
# vLLM role starts every model as a generator.
EMBEDDING_RUNTIMES = ("llamacpp", "ollama")


class Stack(StrictModel):
    """Which implementation fills each role of the appliance. The defaults install as they are:
    llama.cpp serving on systemd units, models as files, no registry."""

    registry: Annotated[Literal["harbor", "distribution", "none"], _installable("registry")] = (
        "none"
    )
    object_store: Annotated[Literal["minio", "filesystem"], _installable("object_store")] = (
        "filesystem"
    )
    orchestrator: Annotated[Literal["k3s", "systemd"], _installable("orchestrator")] = "systemd"
    runtime: Annotated[Literal["vllm", "ollama", "llamacpp"], _installable("runtime")] = "llamacpp"


def stack_files_missing(stack: Stack, names: set[str]) -> str:
    """Every file the stack needs and ``names`` (the spec's files: entries) lacks, in one
    message ("" when none): each is a separate download the user has to look up."""
    missing: list[str] = []
    if stack.object_store == "minio" and MINIO_FILE not in names:
        missing.append(
            "stack.object_store is minio: add the MinIO server binary as a files: entry "
            f"named '{MINIO_FILE}' with its URL and sha256 (the last published release, "
            "RELEASE.2025-09-07T16-13-09Z; see examples/production.yaml)"
        )
    if stack.registry == "harbor" and HARBOR_FILE not in names:
        missing.append(
            "stack.registry is harbor: add Harbor's offline installer as a files: entry "
            f"named '{HARBOR_FILE}' with its URL and sha256 "
            "(harbor-offline-installer-v2.15.2.tgz; the harbor role installs Harbor from it, "
            "nothing is fetched on site)"
        )
    if stack.orchestrator == "k3s":
        missing.append(k3s_files_missing(names))
    return ". ".join(m for m in missing if m)
