"""Delta bundles: only what the base lacks travels; verify and install check against the base
the delta names, and refuse anything else."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from appliance.build import BuildOptions, build_bundle
from appliance.bundle import layout
from appliance.bundle.manifest import Manifest
from appliance.bundle.signing import keygen
from appliance.bundle.verify import open_bundle, verify_dir
from appliance.errors import BundleCorruptError, InstallError
from appliance.install.stage import stage
from tests.fixtures.specs import spec_text

pytestmark = [pytest.mark.network]  # the installer wheels come from PyPI (cached after once)


def spec(root: Path, release: str, payloads: dict[str, bytes]) -> Path:
    files = []
    for name, data in payloads.items():
        (root / f"{name}-{release}.bin").write_bytes(data)
        files.append(
            {
                "name": name,
                "url": (root / f"{name}-{release}.bin").as_uri(),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    path = root / f"spec-{release}.yaml"
    path.write_text(
        spec_text(
            "delta-test",
            release,
            stack={"orchestrator": "systemd", "registry": "none"},
            files=files,
        )
    )
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("delta")
    keygen(root / "key", "delta test")
    keygen(root / "other", "not the base")
    same, old, new = os.urandom(1 << 20), os.urandom(1 << 20), os.urandom(1 << 20)
    cache = Path.home() / ".cache" / "appliance"
    build_bundle(
        BuildOptions(
            spec(root, "1", {"same": same, "model": old}), root / "b1", root / "key", cache=cache
        )
    )
    build_bundle(
        BuildOptions(
            spec(root, "2", {"same": same, "model": new}),
            root / "d2",
            root / "key",
            cache=cache,
            base=root / "b1" / layout.MANIFEST,
        )
    )
    build_bundle(
        BuildOptions(spec(root, "9", {"model": new}), root / "b9", root / "key", cache=cache)
    )
    (root / "new.sha256").write_text(hashlib.sha256(new).hexdigest())
    return root


def staged(bundle: Path, pubkey: Path, root: Path) -> tuple[Manifest, Path]:
    """What install does with a bundle: open it once, verified, and stage it under ``root``."""
    with open_bundle(bundle, pubkey) as opened:
        return opened.manifest, stage(opened, root)


def test_delta_holds_exactly_the_changed_blob(bundles: Path) -> None:
    blobs = sorted(p.name for p in (bundles / "d2" / layout.BLOBS).iterdir())
    assert blobs == [(bundles / "new.sha256").read_text()]
    manifest = json.loads((bundles / "d2" / layout.MANIFEST).read_bytes())
    base = (bundles / "b1" / layout.MANIFEST).read_bytes()
    assert manifest["base"] == {
        "sha256": hashlib.sha256(base).hexdigest(),
        "name": "delta-test",
        "release": "1",
    }
    shipped = {f["path"] for f in manifest["files"] if not f["from_base"]}
    assert shipped == {layout.blob_path(blobs[0]), layout.SBOM, layout.INSTALL_SH}
    # Everything else, wheels and the Ansible content included, came out byte-identical.
    assert len(manifest["files"]) == len(json.loads(base)["files"])


def test_verify_checks_the_rest_in_the_named_base(bundles: Path) -> None:
    alone = verify_dir(bundles / "d2", bundles / "key.pub")
    assert alone.files == 3 and alone.unchecked_from_base > 20
    full = verify_dir(bundles / "d2", bundles / "key.pub", base=bundles / "b1")
    assert full.unchecked_from_base == 0
    assert full.files == len(json.loads((bundles / "d2" / layout.MANIFEST).read_bytes())["files"])


def test_verify_refuses_another_base(bundles: Path) -> None:
    with pytest.raises(BundleCorruptError) as caught:
        verify_dir(bundles / "d2", bundles / "key.pub", base=bundles / "b9")
    assert caught.value.message.startswith(f"{bundles / 'b9'} is not the base this delta needs")


def test_install_refuses_a_delta_without_its_base_and_completes_it_with_one(
    bundles: Path, tmp_path: Path
) -> None:
    with pytest.raises(InstallError) as caught:
        staged(bundles / "d2", bundles / "key.pub", tmp_path)
    assert caught.value.message.startswith(
        "this delta bundle needs release 1 of delta-test (manifest sha256 "
    )
    assert caught.value.message.endswith("on this depot; it holds: no release")
    assert not (tmp_path / "releases" / "2").exists()

    staged(bundles / "b1", bundles / "key.pub", tmp_path)
    manifest, release = staged(bundles / "d2", bundles / "key.pub", tmp_path)
    assert release == tmp_path / "releases" / "2"
    # The new release is complete on its own: every file, checked, no base needed.
    report = verify_dir(release, bundles / "key.pub")
    assert report.unchecked_from_base == 0
    assert report.files == len(manifest.by_path())
