"""What a registry in the stack asks of the spec's images."""

from __future__ import annotations

from appliance.registry import RegistryError, namespace, upstream_host
from appliance.spec.checks import err


def check_registry_images(refs: list[str]) -> None:
    """``registry: distribution`` seeds the bundle's images and the engines pull them through
    one mirror rule per upstream registry: it needs images, and each upstream host must fit in a
    repository name (the rule's namespace), or no rule can map that host's images."""
    if not refs:
        raise err(
            "registry_without_images",
            "stack.registry is distribution but the spec lists no images: list the container "
            "images the registry serves under images: (each pinned by digest), or choose "
            "registry: none",
        )
    for ref in refs:
        host = upstream_host(ref)
        try:
            namespace(host)
        except RegistryError:
            raise err(
                "no_mirror_rule",
                "image {ref}: its upstream registry '{host}' has no mirror rule: the local "
                "registry keeps each image under its upstream host's name, and '{host}' cannot be "
                "a repository path component (use the registry's DNS name or IPv4 address)",
                ref=ref,
                host=host,
            ) from None
