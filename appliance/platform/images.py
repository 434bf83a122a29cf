"""Image references split the way registries and mirrors see them.

The local registry keeps upstream names (``<registry>/<upstream host>/<path>``), so one rewrite
rule per upstream host maps every image; Docker Hub's short names get their implicit host and
``library/`` prefix here, as every engine resolves them."""

from __future__ import annotations

from dataclasses import dataclass

DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class ImageName:
    host: str
    path: str
    digest: str

    @property
    def upstream(self) -> str:
        """The reference by digest as an engine names it before mirroring."""
        return f"{self.host}/{self.path}@{self.digest}"

    def local(self, registry: str) -> str:
        """The same image in the local registry, under its upstream host."""
        return f"{registry}/{self.host}/{self.path}@{self.digest}"


def split_image(ref: str) -> ImageName:
    """``ref`` is a spec image reference (validated: it carries ``@sha256:``)."""
    name, sep, digest = ref.partition("@")
    if not sep:
        raise ValueError(f"image reference {ref!r} is not pinned by digest")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name.rsplit(":", 1)[0]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageName(host=host, path=path, digest=digest)


def upstream_hosts(refs: list[str]) -> list[str]:
    """Every upstream registry the images come from, sorted: one mirror rule each."""
    return sorted({split_image(ref).host for ref in refs})
