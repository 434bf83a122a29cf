"""The source registry and the build that drives it: one table, every check before any fetch,
and a bundle assembled from what the kinds describe. Offline: local files and a loopback
server only; the kinds that need PyPI or a Debian archive are left out of the table here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.build import BuildOptions, build_bundle
from appliance.build.registry import SOURCES
from appliance.bundle.signing import keygen
from appliance.bundle.verify import verify_dir
from appliance.errors import BuildError
from appliance.fetchers.source import SourceKind
from tests.fixtures.http_server import Route, serve

PAYLOAD = b"payload bytes\n" * 100


def spec(root: Path, body: str) -> Path:
    path = root / "spec.yaml"
    path.write_text(
        "version: 1\nname: unit\nrelease: '1'\ntargets: [{os: debian-12, arch: amd64}]\n"
        "stack: {orchestrator: systemd, registry: none, object_store: filesystem, "
        "runtime: llamacpp}\n" + body
    )
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    keygen(tmp_path / "key", "unit test")
    return tmp_path / "key"


def test_every_kind_is_in_one_table_with_the_same_three_steps() -> None:
    assert list(SOURCES) == [
        "files",
        "packages",
        "images",
        "wheels",
        "models-local",
        "models-hf",
        "models-ollama",
        "models-s3",
        "installer",
        "ansible-content",
    ]
    for name, kind in SOURCES.items():
        for step in ("check", "fetch", "describe"):
            assert callable(getattr(kind, step, None)), (name, step)


def test_no_byte_is_fetched_before_every_kind_has_checked(tmp_path: Path, key: Path) -> None:
    with serve({"/a.bin": Route(PAYLOAD)}) as upstream:
        path = spec(
            tmp_path,
            f"files:\n  - {{name: a, url: '{upstream.url('/a.bin')}', "
            f"sha256: '{hashlib.sha256(PAYLOAD).hexdigest()}'}}\n"
            "models:\n  - {name: tiny, source: models/missing.gguf, format: gguf}\n",
        )
        options = BuildOptions(path, tmp_path / "out", key, cache=tmp_path / "cache")
        with pytest.raises(BuildError, match=r"model tiny: .*models/missing.gguf does not exist"):
            build_bundle(options)
        # The files kind comes first in the table, yet the model's check stopped the build
        # before it fetched anything.
        assert upstream.requests == []
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def offline_sources(*names: str) -> dict[str, SourceKind[Any, Any]]:
    return {name: SOURCES[name] for name in names}


def test_a_bundle_is_what_the_kinds_describe(tmp_path: Path, key: Path) -> None:
    (tmp_path / "a.bin").write_bytes(PAYLOAD)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(b"GGUF" + bytes(64))
    path = spec(
        tmp_path,
        f"files:\n  - {{name: a, url: '{(tmp_path / 'a.bin').as_uri()}', "
        f"sha256: '{hashlib.sha256(PAYLOAD).hexdigest()}'}}\n"
        "models:\n  - {name: tiny, source: models/tiny.gguf, format: gguf}\n",
    )
    report = build_bundle(
        BuildOptions(path, tmp_path / "out", key, cache=tmp_path / "cache"),
        sources=offline_sources("files", "packages", "models-local", "ansible-content"),
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert {(c["kind"], c["name"]) for c in manifest["components"]} == {
        ("file", "a"),
        ("model", "tiny"),
        ("ansible-content", "ansible-content"),
        ("sbom", "sbom"),
    }
    # The packages kind fetched nothing (no packages section) but says what the roles need.
    assert manifest["role_packages"] == {
        "firewall": ["nftables"],
        "local_repo": ["nginx-light", "python3-apt"],
        "runtime_llamacpp": ["libgomp1"],
    }
    assert manifest["repo"] is None and manifest["packages"] == []
    assert report.warnings == [
        "the spec has no packages section, so the bundle carries no OS packages: every host "
        "must already have python3-apt (role local_repo); nginx-light (role local_repo); "
        "nftables (role firewall); libgomp1 (role runtime_llamacpp), or the install fails. "
        "Add a packages section with the archive's sources to carry them"
    ]
    assert (report.fetched_count, report.cached_count) == (1, 0)
    assert verify_dir(tmp_path / "out", tmp_path / "key.pub").files == report.files

    again = build_bundle(
        BuildOptions(path, tmp_path / "out", key, cache=tmp_path / "cache", force=True),
        sources=offline_sources("files", "packages", "models-local", "ansible-content"),
    )
    assert (again.fetched_count, again.cached_count) == (0, 1)
    rebuilt = json.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert rebuilt["files"] == manifest["files"]
