"""What a registry in the stack asks of the spec's images."""

from __future__ import annotations

from appliance.spec.checks import err


def check_registry_images(refs: list[str], kind: str = "distribution") -> None:
    """A registry in the stack (``distribution``, ``harbor``) seeds the bundle's images: it
    needs images. (That each upstream host can be named by a mirror rule is checked per image,
    spec/checks.py.) Harbor names a project after each upstream host, which a port cannot be
    part of."""
    if not refs:
        raise err(
            "registry_without_images",
            "stack.registry is {registry} but the spec lists no images: list the container "
            "images the registry serves under images: (each pinned by digest), or choose "
            "registry: none",
            registry=kind,
        )
    if kind != "harbor":
        return
    # Late: appliance.registry reads the bundle's manifest model, which imports the spec.
    from appliance.platform.harbor import project_name
    from appliance.registry import upstream_host

    for host in sorted({upstream_host(ref) for ref in refs}):
        try:
            project_name(host)
        except ValueError:
            raise err(
                "harbor_project_name",
                "stack.registry is harbor, which keeps each upstream registry's images in a "
                "project named after it, and upstream registry '{host}' has a port, which a "
                "project name cannot carry: use registry: distribution for its images",
                host=host,
            ) from None
