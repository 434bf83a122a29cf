"""images: container images pinned by digest, fetched with skopeo into an OCI image layout
whose blobs are the bundle's own blob store, so a layer shared by several images is stored once.

skopeo is the tool regulated teams already trust for mirroring; ``--preserve-digests`` keeps
every manifest's digest, and the target architecture is picked from multi-arch indexes (or, with
``platforms: all``, the index and every platform are kept, so the index digest can be pulled from
the local registry: docker-registry refuses an index whose platforms it does not hold). skopeo
checks every blob against its digest while copying, so the layout it keeps in the cache is
trusted by name: a rebuild takes an image whose pinned manifest and blobs are all there without
asking the registry, and files each blob into the store only once.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import Component
from appliance.bundle.store import BlobStore
from appliance.errors import BuildError, FetchError
from appliance.fetchers.source import Job, Part, Request, blob_entry, file_entry
from appliance.spec.models import Image

OCI_LAYOUT = "oci-layout"
OCI_INDEX = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class FetchedImage:
    ref: str
    pinned: str  # the digest the spec names
    # The digest of the manifest stored: a platform's for an index, unless platforms is all.
    manifest_digest: str
    blobs: list[tuple[str, int]]  # (sha256 hex, size): the index, each manifest, config, layers
    descriptor: dict[str, Any]


def _loopback(ref: str) -> bool:
    host = ref.split("/", 1)[0].rsplit(":", 1)[0] if "/" in ref else ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def skopeo_path() -> str:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise BuildError(
            "skopeo is not installed on this build machine; it fetches container images",
            hint="install it (Debian: apt-get install skopeo)",
        )
    return skopeo


def fetch_images(
    images: list[Image], arch: str, store: BlobStore, work: Path, bundle: BlobStore | None = None
) -> list[FetchedImage]:
    """Copy every image into ``work`` (an OCI layout, kept as a cache), then file its blobs in
    ``store``, and link them into ``bundle`` when that is another store."""
    skopeo = skopeo_path()
    work.mkdir(parents=True, exist_ok=True)
    fetched = []
    for image in images:
        name, _, pinned = image.ref.partition("@")
        repository, _, _tag = (
            name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        )
        # skopeo 1.9 refuses tag and digest together; the digest is what pins it anyway. A
        # layout reference per pinned digest and architecture (an index names one per arch).
        every = image.platforms == "all"
        tag = f"{pinned.replace(':', '-')}-{'all' if every else arch}"
        if not _complete(work, tag):
            _copy(skopeo, image, repository, pinned, arch, work, tag)
        fetched.append(_file_image(image.ref, pinned, tag, work, store, bundle, every))
    return fetched


def _copy(
    skopeo: str, image: Image, repository: str, pinned: str, arch: str, work: Path, tag: str
) -> None:
    command = [
        skopeo,
        "copy",
        "--quiet",
        "--preserve-digests",
        *(
            ["--all"]
            if image.platforms == "all"
            else ["--override-os", "linux", "--override-arch", arch]
        ),
        *(["--src-tls-verify=false"] if _loopback(image.ref) else []),
        f"docker://{repository}@{pinned}",
        f"oci:{work}:{tag}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise FetchError(
            f"image {image.ref}: skopeo copy failed: {result.stderr.strip()[-500:]}",
            hint="check the reference and digest, and that this machine reaches the registry",
        )


def _complete(work: Path, tag: str) -> bool:
    """Whether the layout already holds the image pinned as ``tag``, every blob of it."""
    try:
        index = json.loads((work / OCI_INDEX).read_text())
        (descriptor,) = [
            d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) == tag
        ]
        digests = _blobs_of(work / "blobs" / "sha256", descriptor["digest"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((work / "blobs" / "sha256" / d.split(":", 1)[1]).is_file() for d in digests)


def _blobs_of(blobs_dir: Path, digest: str) -> list[str]:
    """The digests ``digest`` names, itself first: an index's manifests and theirs, a manifest's
    config and layers. Raises OSError for a manifest the layout lacks."""
    manifest = json.loads((blobs_dir / digest.split(":", 1)[1]).read_bytes())
    found = [digest]
    if "manifests" in manifest:
        for child in manifest["manifests"]:
            found += _blobs_of(blobs_dir, child["digest"])
        return found
    return [*found, manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]


def _file_image(
    ref: str,
    pinned: str,
    tag: str,
    work: Path,
    store: BlobStore,
    bundle: BlobStore | None,
    every: bool = False,
) -> FetchedImage:
    index = json.loads((work / OCI_INDEX).read_text())
    (descriptor,) = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) == tag]
    manifest_digest = descriptor["digest"]
    blobs_dir = work / "blobs" / "sha256"

    def add(digest: str) -> tuple[str, int]:
        hexdigest = digest.split(":", 1)[1]
        if not store.has(hexdigest):
            store.add_file(blobs_dir / hexdigest, expected=hexdigest, what=f"image {ref}")
        if bundle is not None and bundle is not store:
            bundle.link_from(store, hexdigest)
        return hexdigest, store.size(hexdigest)

    manifest = json.loads((blobs_dir / manifest_digest.split(":", 1)[1]).read_bytes())
    if "manifests" in manifest and not every:
        raise FetchError(f"image {ref}: expected one platform's manifest, got an index")
    # A layer shared by two platforms is one blob: each listed once.
    blobs = [add(digest) for digest in dict.fromkeys(_blobs_of(blobs_dir, manifest_digest))]
    entry = {k: v for k, v in descriptor.items() if k != "annotations"}
    entry["annotations"] = {REF_NAME: ref}
    return FetchedImage(ref, pinned, manifest_digest, blobs, entry)


def write_layout(bundle: Path, images: list[FetchedImage]) -> list[str]:
    """Make the bundle root an OCI image layout over its blobs; returns the files written."""
    (bundle / OCI_LAYOUT).write_text(json.dumps({"imageLayoutVersion": "1.0.0"}) + "\n")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [image.descriptor for image in images],
    }
    (bundle / OCI_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [OCI_LAYOUT, OCI_INDEX]


class ImagesSource:
    """The spec's ``images:``: each image a component; the bundle root is their OCI layout."""

    def check(self, request: Request) -> list[Image] | None:
        if not request.spec.images:
            return None
        skopeo_path()
        return list(request.spec.images)

    def fetch(self, job: Job, plan: list[Image]) -> list[FetchedImage]:
        job.progress.note("fetching container images")
        # The cache keeps skopeo's layout: a rebuild finds every image already there.
        images = fetch_images(plan, job.target.arch, job.landing, job.work_dir("oci"), job.store)
        write_layout(job.staging, images)
        return images

    def describe(self, job: Job, fetched: list[FetchedImage]) -> Part:
        part = Part()
        for image in fetched:
            part.add(
                Component(
                    name=image.ref, kind="image", version=image.manifest_digest, source=image.ref
                ),
                *(
                    blob_entry(digest, size, "image", image.ref, image.ref)
                    for digest, size in image.blobs
                ),
            )
        part.add(
            Component(name="images", kind="image-index", version="oci-1.0.0"),
            *(
                file_entry(name, (job.staging / name).read_bytes(), "image-index", "images")
                for name in (OCI_LAYOUT, OCI_INDEX)
            ),
        )
        return part
