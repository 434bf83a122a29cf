"""images: container images pinned by digest, fetched with skopeo into an OCI image layout
whose blobs are the bundle's own blob store, so a layer shared by several images is stored once.

skopeo is the tool regulated teams already trust for mirroring; ``--preserve-digests`` keeps
every manifest's digest, and the target architecture is picked from multi-arch indexes.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundle.store import BlobStore
from appliance.errors import BuildError, FetchError
from appliance.spec.models import Image

OCI_LAYOUT = "oci-layout"
OCI_INDEX = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class FetchedImage:
    ref: str
    pinned: str  # the digest the spec names
    manifest_digest: str  # the digest of the manifest stored (a platform's, for an index)
    blobs: list[tuple[str, int]]  # (sha256 hex, size) of manifest, config and layers
    descriptor: dict[str, Any]


def _loopback(ref: str) -> bool:
    host = ref.split("/", 1)[0].rsplit(":", 1)[0] if "/" in ref else ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_images(
    images: list[Image], arch: str, store: BlobStore, work: Path
) -> list[FetchedImage]:
    """Copy every image into ``work`` (an OCI layout, kept as a cache), then file its blobs."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise BuildError(
            "skopeo is not installed on this build machine; it fetches container images",
            hint="install it (Debian: apt-get install skopeo)",
        )
    work.mkdir(parents=True, exist_ok=True)
    fetched = []
    for image in images:
        name, _, pinned = image.ref.partition("@")
        repository, _, _tag = (
            name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        )
        # skopeo 1.9 refuses tag and digest together; the digest is what pins it anyway.
        tag = pinned.replace(":", "-")  # a layout reference per pinned digest
        command = [
            skopeo,
            "copy",
            "--quiet",
            "--preserve-digests",
            "--override-os",
            "linux",
            "--override-arch",
            arch,
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
        fetched.append(_file_image(image.ref, pinned, tag, work, store))
    return fetched


def _file_image(ref: str, pinned: str, tag: str, work: Path, store: BlobStore) -> FetchedImage:
    index = json.loads((work / OCI_INDEX).read_text())
    (descriptor,) = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) == tag]
    manifest_digest = descriptor["digest"]
    blobs_dir = work / "blobs" / "sha256"

    def add(digest: str) -> tuple[str, int]:
        hexdigest = digest.split(":", 1)[1]
        blob = store.add_file(blobs_dir / hexdigest, expected=hexdigest, what=f"image {ref}")
        return blob.sha256, blob.size

    manifest = json.loads((blobs_dir / manifest_digest.split(":", 1)[1]).read_bytes())
    blobs = [add(manifest_digest), add(manifest["config"]["digest"])]
    blobs += [add(layer["digest"]) for layer in manifest.get("layers", [])]
    if pinned != manifest_digest and manifest.get("mediaType", "").endswith("index.v1+json"):
        raise FetchError(f"image {ref}: expected one platform's manifest, got an index")
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
