"""What a registry in the stack asks of the spec's images."""

from __future__ import annotations

from appliance.spec.checks import err


def check_registry_images(refs: list[str]) -> None:
    """``registry: distribution`` seeds the bundle's images: it needs images. (That each
    upstream host can be named by a mirror rule is checked per image, spec/checks.py.)"""
    if not refs:
        raise err(
            "registry_without_images",
            "stack.registry is distribution but the spec lists no images: list the container "
            "images the registry serves under images: (each pinned by digest), or choose "
            "registry: none",
        )
