"""What ``orchestrator: k3s`` needs from the rest of a spec, checked before anything is fetched.

k3s installs air-gapped as its documentation describes: its binary, the airgap images tarball
and its install script, each a ``files:`` entry pinned by sha256 (the k3s role's defaults name
the entries). Its embedded containerd pulls every other image (the runtimes', the device
plugin's) by its upstream reference through registries.yaml, from the registry inside the
boundary, with the default endpoint disabled: without a registry in the stack nothing could
serve those images, and k3s would fail at the first pod instead of at validation.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.platform.images import (
    DEVICE_PLUGIN_IMAGE_NAME,
    RUNTIME_IMAGE_NAMES,
    find_image,
    runtime_image,
)
from appliance.spec.checks import err

# The k3s role's k3s_file_binary, k3s_file_images and k3s_file_install_script defaults, with the
# upstream artifact each carries (../shared/upstream-pins.md: names, versions, sha256).
K3S_FILES: dict[str, str] = {
    "k3s": "the k3s binary (k3s or k3s-arm64 of the release)",
    "k3s-airgap-images": "the airgap images tarball (k3s-airgap-images-<arch>.tar.zst)",
    "k3s-install.sh": "k3s's install script (install.sh at the release's commit)",
}
K3S_REGISTRIES = ("distribution", "harbor")
# The runtimes whose models run as k3s workloads. Ollama keeps its models in its own store
# layout under names of its own, which the workloads do not map yet.
K3S_RUNTIMES = ("llamacpp", "vllm")


def k3s_files_missing(names: set[str]) -> str:
    """What a k3s spec lacks among its files: entries, said whole ("" when nothing)."""
    missing = [name for name in K3S_FILES if name not in names]
    if not missing:
        return ""
    return (
        f"stack.orchestrator is k3s: add {'; '.join(K3S_FILES[name] for name in missing)} "
        f"as files: entries named {', '.join(repr(name) for name in missing)}, each with "
        "its URL and sha256 (the k3s v1.34.3+k3s1 release; see the README, Container "
        "platform)"
    )


def check_k3s_registry(registry: str) -> None:
    if registry not in K3S_REGISTRIES:
        raise err(
            "k3s_needs_registry",
            "stack.orchestrator is k3s but stack.registry is {registry}: k3s pulls its "
            "workloads' images only from the registry inside the boundary; set stack.registry "
            "to one of {registries}",
            registry=registry,
            registries=", ".join(K3S_REGISTRIES),
        )


def check_k3s_runtime_image(runtime: str, refs: Sequence[str]) -> None:
    if runtime not in K3S_RUNTIMES:
        raise err(
            "k3s_runtime_unsupported",
            "stack.orchestrator is k3s but stack.runtime is {runtime}, which this release does "
            "not run as a k3s workload; set stack.runtime to one of {runtimes}, or "
            "stack.orchestrator to systemd",
            runtime=runtime,
            runtimes=", ".join(K3S_RUNTIMES),
        )
    if runtime_image(refs, runtime) is None:
        raise err(
            "k3s_runtime_image_missing",
            "stack.orchestrator is k3s and the spec has models: add the {runtime} runtime's "
            "image under images:, pinned by digest, from a repository named '{name}' (e.g. "
            "<registry>/<path>/{name}:<tag>@sha256:<digest>); each model runs as a Deployment "
            "of it",
            runtime=runtime,
            name=RUNTIME_IMAGE_NAMES[runtime],
        )


def k3s_gpu_problem(toolkit: bool, refs: Sequence[str]) -> str:
    """What a k3s bundle with NVIDIA's driver lacks for GPU pods ("" when nothing): with the
    device plugin among its images, the GPU nodes' k3s runs every pod with NVIDIA's runtime
    (``default-runtime: nvidia``), which only the NVIDIA Container Toolkit provides; without it
    every pod on those nodes fails to start."""
    if toolkit or find_image(refs, DEVICE_PLUGIN_IMAGE_NAME) is None:
        return ""
    return (
        "stack.orchestrator is k3s and the images hold the NVIDIA device plugin, so the GPU "
        "nodes run their pods with NVIDIA's runtime, which the bundle lacks: set "
        "nvidia.container_toolkit: true (or leave the device plugin out to run without GPUs)"
    )
