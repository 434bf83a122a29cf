"""Which upstream registries the bundle's images come from, and where the local registry keeps
each image: the one naming rule the registry (seeding), the container engines (mirror rules)
and k3s (registries.yaml) share.

The local registry keeps upstream names: ``ghcr.io/acme/app`` is stored as the repository
``ghcr.io/acme/app`` of the local registry, so one mirror rule per upstream registry (its
namespace as a path prefix) maps every image of that registry. A repository path component may
not hold ``:`` (the distribution spec's grammar), so an upstream with a port,
``registry.example:5000``, becomes the namespace ``registry.example_5000``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# What Docker and containerd call Docker Hub when a reference names no registry.
DOCKER_HUB = "docker.io"
# A hostname (RFC 1123 labels, lowercase) or IPv4 address, with an optional port: what a
# hosts.toml directory, a registries.yaml key and a repository path component can all hold.
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_MIRRORABLE = re.compile(rf"^{_LABEL}(\.{_LABEL})*(:[0-9]{{1,5}})?$")


def split_reference(ref: str) -> tuple[str, str]:
    """``(upstream host, repository path)`` of an image reference, normalised as Docker and
    containerd's CRI plugin do: no registry means Docker Hub, and a one-component Hub name is
    ``library/<name>``."""
    name = ref.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name.rpartition(":")[0]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return host, path


def upstream_host(ref: str) -> str:
    return split_reference(ref)[0]


def unmirrorable_host(ref: str) -> str | None:
    """The upstream registry of ``ref`` when no mirror rule can name it (None: one can)."""
    host = upstream_host(ref)
    return None if _MIRRORABLE.match(host) else host


def namespace(host: str) -> str:
    """The local registry's path prefix for the images of upstream ``host``."""
    return host.replace(":", "_")


def local_repository(ref: str) -> str:
    """Where the local registry keeps ``ref``: ``<namespace>/<path>`` (no registry address)."""
    host, path = split_reference(ref)
    return f"{namespace(host)}/{path}"


def upstream_registries(refs: Iterable[str]) -> list[str]:
    """The upstream registries ``refs`` come from, sorted, each once."""
    return sorted({upstream_host(ref) for ref in refs})
