"""The images in k3s's airgap tarball, read from the tarball itself.

k3s's own pods (coredns, local-path-provisioner, metrics-server, pause) run images k3s imports
from ``k3s-airgap-images-<arch>.tar.zst`` at start; they are never pulled, and their pods name
them by tag. The bundle pins the tarball by sha256, so its contents are as trusted as the rest
of the bundle: the list is read from the tarball the release holds, not from the release's
``k3s-images.txt`` (tags only, and a separate download).

k3s builds the tarball with ``docker image save`` (k3s-io/k3s scripts/package-airgap). Since
Docker 25 such an archive is an OCI layout as well: ``index.json`` lists each image's manifest
descriptor, named by the ``io.containerd.image.name`` annotation, and ``manifest.json`` gives
each image's config blob and tags. containerd imports the index's descriptor as the image's
target, so a pod's ``imageID`` is ``<name>@<manifest digest>``; without a repository digest the
CRI reports the config digest (``sha256:<config>``) instead. Both count as the image's digests.
An older archive (no ``index.json``) still has ``manifest.json``: its config file name is the
config digest.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from appliance.errors import BundleCorruptError

# The spec's files: entry that carries the tarball (the k3s role's k3s_file_images).
AIRGAP_FILE = "k3s-airgap-images"
# The archive's index files are small; a larger one is not an archive docker wrote.
_MAX_INDEX_BYTES = 4 * 1024 * 1024
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_WANTED = ("index.json", "manifest.json")


@dataclass(frozen=True)
class AirgapImage:
    """One image of the tarball: its name with tag (``docker.io/rancher/mirrored-pause:3.6``)
    and every digest a node may report for it."""

    ref: str
    digests: frozenset[str]


def normalise(name: str) -> str:
    """A docker short name as containerd names it (``rancher/x:1`` -> ``docker.io/rancher/x:1``,
    ``busybox:1`` -> ``docker.io/library/busybox:1``)."""
    first, slash, _rest = name.partition("/")
    if not slash:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def images_from_index(index: dict[str, Any], manifest: list[dict[str, Any]]) -> list[AirgapImage]:
    """The images ``index.json`` and ``manifest.json`` of one archive name."""
    digests: dict[str, set[str]] = {}
    for descriptor in index.get("manifests") or []:
        annotations = descriptor.get("annotations") or {}
        name = annotations.get("io.containerd.image.name")
        if name and str(descriptor.get("digest", "")).startswith("sha256:"):
            digests.setdefault(normalise(str(name)), set()).add(str(descriptor["digest"]))
    for entry in manifest:
        config = str(entry.get("Config") or "")
        # "blobs/sha256/<hex>" (Docker 25+) or "<hex>.json" (older archives).
        hex_digest = config.rsplit("/", 1)[-1].removesuffix(".json")
        for tag in entry.get("RepoTags") or []:
            if len(hex_digest) == 64:
                digests.setdefault(normalise(str(tag)), set()).add(f"sha256:{hex_digest}")
    return [AirgapImage(ref, frozenset(found)) for ref, found in sorted(digests.items())]


def _members(stream: IO[bytes], where: str) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if member.name.removeprefix("./") not in _WANTED or not member.isfile():
                continue
            if member.size > _MAX_INDEX_BYTES:
                raise BundleCorruptError(
                    f"{where}: {member.name} is {member.size} bytes, not an image archive's index",
                    hint="the bundle's k3s-airgap-images file must be k3s's release asset",
                )
            handle = archive.extractfile(member)
            assert handle is not None  # a regular file always has content
            yield member.name.removeprefix("./"), handle.read()


def read_airgap_images(path: Path) -> list[AirgapImage]:
    """The images of a k3s airgap tarball (``.tar.zst`` or plain ``.tar``), streamed once."""
    found: dict[str, Any] = {}
    try:
        with path.open("rb") as raw:
            compressed = raw.read(4) == _ZSTD_MAGIC
            raw.seek(0)
            stream: IO[bytes] = (
                zstandard.ZstdDecompressor().stream_reader(raw) if compressed else raw
            )
            for name, data in _members(stream, str(path)):
                found[name] = json.loads(data)
    except (tarfile.TarError, zstandard.ZstdError, ValueError, OSError) as error:
        raise BundleCorruptError(
            f"{path}: cannot read the images of the k3s airgap tarball: {error}",
            hint="the bundle's k3s-airgap-images file must be k3s's release asset; "
            "run appliance verify-bundle on the bundle",
        ) from error
    if "index.json" not in found and "manifest.json" not in found:
        raise BundleCorruptError(
            f"{path}: no index.json or manifest.json: not an image archive",
            hint="the bundle's k3s-airgap-images file must be k3s's release asset",
        )
    return images_from_index(found.get("index.json") or {}, found.get("manifest.json") or [])
