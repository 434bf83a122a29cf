"""Which of the bundle's images each k3s workload runs, found by the upstream repository's own
name: the spec lists images by reference only, and each runtime's image is published under one
name (its project's), whatever registry or tag the site pins.

Pure (no file, no network): the spec check and the installer's plan both use it.
"""

from __future__ import annotations

from collections.abc import Iterable

# The last path component of each image's upstream repository (ghcr.io/ggml-org/llama.cpp,
# docker.io/vllm/vllm-openai, docker.io/ollama/ollama, nvcr.io/nvidia/k8s-device-plugin).
RUNTIME_IMAGE_NAMES: dict[str, str] = {
    "llamacpp": "llama.cpp",
    "vllm": "vllm-openai",
    "ollama": "ollama",
}
DEVICE_PLUGIN_IMAGE_NAME = "k8s-device-plugin"


def image_name(ref: str) -> str:
    """``ghcr.io/ggml-org/llama.cpp:server@sha256:...`` -> ``llama.cpp``."""
    path = ref.partition("@")[0].rsplit("/", 1)[-1]
    return path.partition(":")[0]


def find_image(refs: Iterable[str], name: str) -> str | None:
    """The first of ``refs`` whose repository is called ``name`` (None: there is none)."""
    return next((ref for ref in refs if image_name(ref) == name), None)


def runtime_image(refs: Iterable[str], runtime: str) -> str | None:
    return find_image(refs, RUNTIME_IMAGE_NAMES[runtime])
