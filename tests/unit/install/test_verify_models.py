"""appliance verify's judgement of served models: every model a runtime serves, named by the
digest of the bytes on disk, and every gateway route, must be in the bundle's or the site's
signed manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.manifest import Component, FileEntry
from appliance.install.verify import judge, trusted_digests
from appliance.site import models as site_models
from appliance.site.models import SitePaths
from tests.fixtures.bundles import new_manifest

BUNDLE_BYTES = b"GGUF bundle"
SITE_BYTES = b"GGUF site model"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def manifest() -> Any:
    entry = FileEntry(
        path=f"blobs/sha256/{sha(BUNDLE_BYTES)}", name="tiny.gguf", sha256=sha(BUNDLE_BYTES),
        size=len(BUNDLE_BYTES), kind="model", component="tiny-llama",
    )  # fmt: skip
    return new_manifest([entry], [Component(name="tiny-llama", kind="model")], release="2026.12")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "finetuned"
    directory.mkdir()
    (directory / "model.gguf").write_bytes(SITE_BYTES)
    site_models.add(directory, "support-v3", SitePaths(tmp_path / "site", tmp_path / "store"), {})
    return tmp_path / "site"


def evidence(served: dict[str, bytes], routes: list[dict[str, str]] | None = None) -> Any:
    """A host's evidence: the firewall parts verify always reads, the runtimes' records (one
    file per model) with the sha256 the host computed of each file, the gateway's routes."""
    records, hashed = [], {}
    for name, data in served.items():
        path = f"/var/lib/appliance/models/{name}/model.gguf"
        records.append(
            {"model": name, "files": [{"name": "model.gguf", "path": path, "sha256": "x"}]}
        )
        hashed[path] = sha(data)
    return {
        "host": "depot", "egress": [], "internal": [], "counter": {"rc": 1, "stdout": ""},
        "firewall_unit": "active", "sources": [], "legacy_sources_bytes": 0,
        "served_models": records, "served_files": hashed,
        "gateway": {"models": routes, "key_found": False} if routes is not None else None,
    }  # fmt: skip


def by_name(checks: list[Any], prefix: str) -> dict[str, tuple[bool, str]]:
    return {
        c.name.removeprefix(prefix): (c.passed, c.evidence)
        for c in checks
        if c.name.startswith(prefix)
    }


def test_bundle_and_site_models_are_trusted(manifest: Any, site: Path) -> None:
    trusted, check = trusted_digests(manifest, site)
    assert check is not None and check.passed
    checks = judge(evidence({"tiny-llama": BUNDLE_BYTES, "support-v3": SITE_BYTES}), True, trusted)
    served = by_name(checks, "runtime model in a signed manifest: ")
    assert served == {
        "tiny-llama": (True, f"sha256:{sha(BUNDLE_BYTES)}: release 2026.12"),
        "support-v3": (True, served["support-v3"][1]),
    }
    assert served["support-v3"][1].startswith(
        f"sha256:{sha(SITE_BYTES)}: site model support-v3, added "
    )


def test_a_model_in_neither_manifest_fails(manifest: Any, site: Path) -> None:
    trusted, _ = trusted_digests(manifest, site)
    other = b"GGUF smuggled in"
    routes = [{"name": "smuggled", "digest": f"sha256:{sha(other)}"}]
    checks = judge(evidence({"smuggled": other}, routes), True, trusted)
    assert by_name(checks, "runtime model in a signed manifest: ") == {
        "smuggled": (
            False,
            f"sha256:{sha(other)}: in neither the bundle manifest nor the site manifest",
        )
    }
    assert by_name(checks, "gateway route in a signed manifest: ") == {
        "smuggled": (
            False,
            f"sha256:{sha(other)}: in neither the bundle's manifest nor the site's",
        )
    }


def test_a_file_changed_on_disk_fails_though_its_record_names_a_trusted_digest(
    manifest: Any, site: Path
) -> None:
    trusted, _ = trusted_digests(manifest, site)
    checks = judge(evidence({"support-v3": SITE_BYTES + b"!"}), True, trusted)
    ((passed, _),) = by_name(checks, "runtime model in a signed manifest: ").values()
    assert not passed


def test_a_site_manifest_that_fails_its_signature_is_a_failed_check(
    manifest: Any, site: Path
) -> None:
    (site / "models.json").write_text((site / "models.json").read_text().replace("site", "s1te"))
    trusted, check = trusted_digests(manifest, site)
    assert check is not None and not check.passed
    assert "signature does not verify" in check.evidence
    # Only the bundle's models are trusted then.
    assert set(trusted.values()) == {"release 2026.12"}
