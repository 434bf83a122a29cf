"""appliance verify with site models: a model a runtime serves, and a gateway route, pass when
the bundle's manifest or the site's signed manifest names them; a site manifest whose signature
fails is a failed check, and then its models are trusted no more."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.manifest import Component, FileEntry
from appliance.install.verify import judge
from appliance.install.verify_models import Allowed
from appliance.site import models as site_models
from appliance.site.models import SitePaths
from appliance.site.verify import site_allowed
from tests.fixtures.bundles import new_manifest

BUNDLE_BYTES = b"GGUF bundle"
SITE_BYTES = b"GGUF site model"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bundle_models() -> list[dict[str, Any]]:
    entry = FileEntry(
        path=f"blobs/sha256/{sha(BUNDLE_BYTES)}", name="tiny.gguf", sha256=sha(BUNDLE_BYTES),
        size=len(BUNDLE_BYTES), kind="model", component="tiny-llama",
    )  # fmt: skip
    manifest = new_manifest([entry], [Component(name="tiny-llama", kind="model")], "2026.12")
    return manifest.models()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "finetuned"
    directory.mkdir()
    (directory / "model.gguf").write_bytes(SITE_BYTES)
    site_models.add(directory, "support-v3", SitePaths(tmp_path / "site", tmp_path / "store"), {})
    return tmp_path / "site"


def evidence(served: dict[str, bytes], routes: list[dict[str, str]]) -> Any:
    """One host's evidence: what verify always reads, each runtime's digest list (as the
    runtime wrote it, with what sha256sum --check said) and the gateway's routes."""
    listed = [
        {"path": f"/etc/appliance/llamacpp/{name}.sha256",
         "lines": [f"{sha(data)}  /var/lib/appliance/models/{name}/model.gguf"],
         "rc": 0, "output": []}
        for name, data in served.items()
    ]  # fmt: skip
    return {
        "host": "depot", "egress": [], "internal": [], "counter": {"rc": 1, "stdout": ""},
        "firewall_unit": "active", "sources": [], "legacy_sources_bytes": 0,
        "served_models": listed, "gateway": {"models": routes, "key_found": False},
    }  # fmt: skip


def results(checks: list[Any], prefix: str) -> dict[str, bool]:
    return {c.name.removeprefix(prefix): c.passed for c in checks if c.name.startswith(prefix)}


def test_the_site_manifest_signature_is_checked_and_its_models_trusted(
    bundle_models: list[dict[str, Any]], site: Path
) -> None:
    models, check = site_allowed(site)
    assert check is not None and check.passed
    assert check.evidence.endswith(f"support-v3 sha256:{sha(SITE_BYTES)}")
    allowed = Allowed.of(bundle_models) | Allowed.of(models)
    routes = [
        {"name": "tiny-llama", "digest": f"sha256:{sha(BUNDLE_BYTES)}"},
        {"name": "support-v3", "digest": f"sha256:{sha(SITE_BYTES)}"},
    ]
    checks = judge(
        evidence({"tiny-llama": BUNDLE_BYTES, "support-v3": SITE_BYTES}, routes), True, allowed
    )
    assert results(checks, "served model in the manifest: /etc/appliance/llamacpp/") == {
        "tiny-llama.sha256": True,
        "support-v3.sha256": True,
    }
    assert results(checks, "gateway model in the manifest: ") == {
        "tiny-llama": True,
        "support-v3": True,
    }


def test_without_the_site_manifest_a_site_model_is_in_no_manifest(
    bundle_models: list[dict[str, Any]], site: Path
) -> None:
    routes = [{"name": "support-v3", "digest": f"sha256:{sha(SITE_BYTES)}"}]
    checks = judge(evidence({"support-v3": SITE_BYTES}, routes), True, Allowed.of(bundle_models))
    assert results(checks, "served model in the manifest: /etc/appliance/llamacpp/") == {
        "support-v3.sha256": False
    }
    assert results(checks, "gateway model in the manifest: ") == {"support-v3": False}


def test_a_site_manifest_that_fails_its_signature_is_a_failed_check(site: Path) -> None:
    manifest = site / "models.json"
    manifest.write_text(manifest.read_text().replace("support-v3", "support-v4"))
    models, check = site_allowed(site)
    assert models == []
    assert check is not None and not check.passed
    assert check.evidence == (
        f"site manifest {manifest}: signature does not verify with {site / 'site-key.pub'}; no "
        "site model is served from it"
    )


def test_no_site_model_no_site_check(tmp_path: Path) -> None:
    assert site_allowed(tmp_path / "site") == ([], None)
