"""Container images from a real registry on loopback: shared layers stored once, digests kept,
and the bundle readable by skopeo as an OCI layout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance.build import BuildOptions, build_bundle
from appliance.bundle import layout
from appliance.bundle.signing import keygen
from appliance.bundle.store import BlobStore
from appliance.bundle.verify import verify_dir
from appliance.fetchers.images import fetch_images
from appliance.spec.models import Image
from tests.fixtures.registry import layer, push_image, push_index, raw_manifest, registry
from tests.fixtures.specs import spec_text

pytestmark = [pytest.mark.network]  # the installer wheels come from PyPI (cached after once)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("images")
    base = layer({"etc/os-release": b"ID=appliance-test\n", "lib/base.bin": os.urandom(300_000)})
    with registry(root / "registry") as address:
        digests = {
            name: push_image(
                root / f"oci-{name}",
                f"{address}/appliance/{name}:1",
                [base, layer({f"app/{name}": os.urandom(50_000)})],
            )
            for name in ("app-a", "app-b")
        }
        refs = {name: f"{address}/appliance/{name}:1@{d}" for name, d in digests.items()}
        (root / "spec.yaml").write_text(
            spec_text(
                "images-test",
                "1",
                stack={"orchestrator": "systemd", "registry": "none"},
                images=list(refs.values()),
            )
        )
        keygen(root / "key", "images test")
        build_bundle(
            BuildOptions(root / "spec.yaml", root / "bundle", root / "key", cache=root / "cache")
        )
    return {"root": root, "refs": refs, "digests": digests, "base": base}


def test_shared_layer_is_stored_once(built: dict[str, object]) -> None:
    root = built["root"]
    assert isinstance(root, Path)
    manifest = json.loads((root / "bundle" / layout.MANIFEST).read_bytes())
    images = [f for f in manifest["files"] if f["kind"] == "image"]
    paths = [f["path"] for f in images]
    # Two images x (manifest, config, base layer, own layer) = 8 entries, 7 distinct blobs.
    assert len(images) == 8
    assert len(set(paths)) == 7
    on_disk = {p.name for p in (root / "bundle" / layout.BLOBS).iterdir()}
    assert {p.rsplit("/", 1)[1] for p in paths} <= on_disk


def test_digests_match_the_registry(built: dict[str, object]) -> None:
    root, digests = built["root"], built["digests"]
    assert isinstance(root, Path) and isinstance(digests, dict)
    index = json.loads((root / "bundle" / "index.json").read_text())
    stored = {
        d["annotations"]["org.opencontainers.image.ref.name"]: d["digest"]
        for d in index["manifests"]
    }
    refs = built["refs"]
    assert isinstance(refs, dict)
    assert stored == {refs[name]: digests[name] for name in refs}


def test_skopeo_reads_the_bundle_as_an_oci_layout(built: dict[str, object]) -> None:
    root, refs = built["root"], built["refs"]
    assert isinstance(root, Path) and isinstance(refs, dict)
    for ref in refs.values():
        result = subprocess.run(
            ["skopeo", "inspect", f"oci:{root / 'bundle'}:{ref}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["Architecture"] == "amd64"


def test_bundle_with_images_verifies(built: dict[str, object]) -> None:
    root = built["root"]
    assert isinstance(root, Path)
    verify_dir(root / "bundle", root / "key.pub")


def test_delta_after_one_changed_layer_holds_only_what_changed(
    built: dict[str, object], tmp_path: Path
) -> None:
    root, base, digests = built["root"], built["base"], built["digests"]
    assert isinstance(root, Path) and isinstance(base, bytes) and isinstance(digests, dict)
    new_layer = layer({"app/app-a": os.urandom(50_000)})
    with registry(root / "registry") as address:  # the same storage, a new port
        digest = push_image(tmp_path / "oci-a2", f"{address}/appliance/app-a:2", [base, new_layer])
        image: dict[str, Any] = raw_manifest(f"{address}/appliance/app-a:2")
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            (root / "spec.yaml").read_text().split("images:")[0]
            + f"images:\n  - ref: '{address}/appliance/app-a:2@{digest}'\n"
            + f"  - ref: '{address}/appliance/app-b:1@{digests['app-b']}'\n"
        )
        build_bundle(
            BuildOptions(
                spec,
                tmp_path / "delta",
                root / "key",
                cache=root / "cache",
                base=root / "bundle" / layout.MANIFEST,
            )
        )
    shipped = {p.name for p in (tmp_path / "delta" / layout.BLOBS).iterdir()}
    # app-a's new layer, and the manifest and config that name it; the shared base layer and
    # all of app-b stay with the base bundle.
    assert shipped == {
        digest.split(":")[1],
        image["config"]["digest"].split(":")[1],
        image["layers"][1]["digest"].split(":")[1],
    }
    manifest = json.loads((tmp_path / "delta" / layout.MANIFEST).read_bytes())
    assert manifest["base"]["release"] == "1"
    verify_dir(tmp_path / "delta", root / "key.pub", base=root / "bundle")


def test_a_pinned_index_keeps_the_target_platform_or_every_platform(tmp_path: Path) -> None:
    """platforms: target (the default) keeps the target's manifest alone, whose digest is not
    the pinned index's; platforms: all keeps the index and every platform's blobs, so the index
    digest itself can be seeded and pulled."""
    shared = layer({"lib/shared.bin": os.urandom(20_000)})
    with registry(tmp_path / "registry") as address:
        pinned = push_index(
            tmp_path / "src",
            f"{address}/appliance/multi:1",
            {"amd64": [shared, layer({"a": b"amd64"})], "arm64": [shared, layer({"a": b"arm"})]},
        )
        ref = f"{address}/appliance/multi:1@{pinned}"
        store = BlobStore(tmp_path / "store")
        target, every = fetch_images(
            [Image(ref=ref), Image(ref=ref, platforms="all")], "amd64", store, tmp_path / "oci"
        )
    index = json.loads(store.path(pinned.split(":")[1]).read_bytes())
    amd64, arm64 = (m["digest"] for m in index["manifests"])
    assert target.manifest_digest == amd64
    assert every.manifest_digest == pinned
    assert [f"sha256:{d}" for d, _ in every.blobs][:2] == [pinned, amd64]
    # The index, two manifests, two configs, the shared layer once and each platform's own.
    assert len(every.blobs) == 8 == len({d for d, _ in every.blobs})
    assert {d for d, _ in target.blobs} < {d for d, _ in every.blobs}
    assert arm64.split(":")[1] in {d for d, _ in every.blobs}
    assert every.descriptor["mediaType"] == "application/vnd.oci.image.index.v1+json"
