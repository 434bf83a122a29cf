"""A bundle reveals nothing of the machine that built it: one spec built on two "machines"
(other working directory, home, cache, temporary directory, user, model directory and download
token) gives the same bundle, byte for byte, and none of either machine's names is in it.

Offline: the kinds that need PyPI or a Debian archive are left out of the table, as in
test_registry.py; a loopback server stands in for an artifact host that wants a token.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from appliance.build import BuildOptions, build_bundle
from appliance.build.registry import SOURCES
from appliance.bundle import layout
from appliance.bundle.content import public_source
from appliance.bundle.signing import keygen
from appliance.bundle.verify import verify_dir
from appliance.fetchers.source import SourceKind
from tests.fixtures.http_server import Route, serve

PAYLOAD = b"a release file\n" * 200
MODEL = b"GGUF" + bytes(range(256)) * 4
OTHER_MODEL = b"GGUF" + bytes(range(255, -1, -1)) * 4
SPEC = """\
version: 1
name: leak-check
release: '1'
targets: [{os: debian-12, arch: amd64}]
stack: {orchestrator: systemd, registry: none, object_store: filesystem, runtime: llamacpp}
files:
  - {name: release-file, url: '${FILE_URL}', sha256: 'SHA'}
models:
  - {name: tiny, source: models/tiny.gguf, format: gguf}
  - {name: other, source: '${MODEL_DIR}/other.gguf', format: gguf}
""".replace("SHA", hashlib.sha256(PAYLOAD).hexdigest())
OFFLINE = ("files", "packages", "models-local", "ansible-content")


def machine(root: Path, user: str, file_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A build machine of its own under ``root``: its spec copy, models, home, cache, temp
    directory, user name and token. Returns the spec's path."""
    work = root / f"home-{user}" / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "tiny.gguf").write_bytes(MODEL)
    private_models = root / f"srv-{user}-models"
    private_models.mkdir()
    (private_models / "other.gguf").write_bytes(OTHER_MODEL)
    (root / f"tmp-{user}").mkdir()
    for name, value in {
        "HOME": str(root / f"home-{user}"),
        "USER": user,
        "LOGNAME": user,
        "XDG_CACHE_HOME": str(root / f"home-{user}" / ".cache"),
        "TMPDIR": str(root / f"tmp-{user}"),
        "FILE_URL": file_url,
        "MODEL_DIR": str(private_models),
        "SOURCE_DATE_EPOCH": "1790000000",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(root / f"tmp-{user}"))
    monkeypatch.chdir(work)
    (work / "appliance.yaml").write_text(SPEC)
    return work / "appliance.yaml"


def build(spec: Path, output: Path, key: Path, cache: Path) -> None:
    sources: dict[str, SourceKind[Any, Any]] = {name: SOURCES[name] for name in OFFLINE}
    build_bundle(BuildOptions(spec, output, key, cache=cache), sources=sources)


def tree(bundle: Path) -> dict[str, bytes]:
    return {
        path.relative_to(bundle).as_posix(): path.read_bytes()
        for path in sorted(bundle.rglob("*"))
        if path.is_file()
    }


def test_two_machines_build_the_same_bundle_and_neither_is_named_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keygen(tmp_path / "publisher" / "key", "publisher")  # the same publisher on both
    key = tmp_path / "publisher" / "key"
    routes = {
        "/a.bin?token=alice-s3cret": Route(PAYLOAD),
        "/a.bin?token=bob-t0ken": Route(PAYLOAD),
    }
    bundles = {}
    secrets: list[str] = []
    with serve(routes) as upstream:
        for user, token in (("alice", "alice-s3cret"), ("bob", "bob-t0ken")):
            root = tmp_path / f"machine-{user}"
            url = upstream.url(f"/a.bin?token={token}")
            with monkeypatch.context() as patched:
                spec = machine(root, user, url, patched)
                build(spec, root / "out" / "bundle", key, root / f"home-{user}" / ".cache" / "a")
            bundles[user] = root / "out" / "bundle"
            secrets += [str(root), user, token, f"home-{user}", f"srv-{user}-models"]
    verify_dir(bundles["alice"], key.with_name("key.pub"))
    alice, bob = tree(bundles["alice"]), tree(bundles["bob"])
    assert alice.keys() == bob.keys()
    for name in (layout.MANIFEST, layout.SBOM, layout.SHA256SUMS):
        assert alice[name] == bob[name], name
    assert alice == bob  # every file, signatures included: nothing differs but the inputs
    for name, data in alice.items():
        for secret in [*secrets, str(tmp_path)]:
            assert secret.encode() not in data, (secret, name)
    manifest = json.loads(alice[layout.MANIFEST])
    assert manifest["created"] == "2026-09-21T14:13:20Z"  # SOURCE_DATE_EPOCH
    sources = {c["name"]: c.get("source") for c in manifest["components"]}
    assert sources["release-file"] == upstream.url("/a.bin")  # no token
    assert sources["tiny"] is None and sources["other"] is None  # no build-machine path
    sbom = json.loads(alice[layout.SBOM])
    (other,) = [c for c in sbom["components"] if c["name"] == "other"]
    assert "externalReferences" not in other


@pytest.mark.parametrize(
    ("kind", "source", "recorded"),
    [
        (
            "file",
            "https://user:pw@files.example:8443/a/b.tgz?X-Amz-Signature=abc#f",
            "https://files.example:8443/a/b.tgz",
        ),
        (
            "deb",
            "http://[fd00::1]:3142/debian/pool/j/jq.deb",
            "http://[fd00::1]:3142/debian/pool/j/jq.deb",
        ),
        ("file", "file:///home/alice/build/tool.tgz", None),
        ("model", "/home/alice/models/tiny.gguf", None),
        ("model", "models/tiny.gguf", None),
        ("model", "~/models/tiny.gguf", None),
        ("model", "hf://org/repo", "hf://org/repo"),
        ("model", "ollama://library/llama:1b", "ollama://library/llama:1b"),
        ("image", "127.0.0.1:5000/app@sha256:" + "0" * 64, "127.0.0.1:5000/app@sha256:" + "0" * 64),
        ("wheel", "pypi", "pypi"),
        ("file", "ftp://host/x", None),
        ("file", None, None),
    ],
)
def test_what_a_bundle_records_of_a_source(kind: str, source: str | None, recorded: str) -> None:
    assert public_source(kind, source) == recorded
