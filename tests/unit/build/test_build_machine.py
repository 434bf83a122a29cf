"""A bundle reveals nothing of the machine that built it: one spec built on two "machines"
(other working directory, home, cache, temporary directory, user, model directory and download
token) gives the same bundle, byte for byte, and none of either machine's names is in it.

Offline: the kinds that need PyPI or a Debian archive are left out of the table, as in
test_registry.py; a loopback server stands in for an artifact host that wants a token
(tests/fixtures/build_machines.py). With OS packages: tests/integration/test_build_machine_apt.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.content import public_source
from tests.fixtures.build_machines import build_on_two_machines


def test_two_machines_build_the_same_bundle_and_neither_is_named_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, secrets, upstream = build_on_two_machines(tmp_path, monkeypatch)
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
    assert sources["release-file"] == upstream  # no token
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
        ("model", "s3://staging/models/tiny", "s3://staging/models/tiny"),
        ("image", "127.0.0.1:5000/app@sha256:" + "0" * 64, "127.0.0.1:5000/app@sha256:" + "0" * 64),
        ("wheel", "pypi", "pypi"),
        ("file", "ftp://host/x", None),
        ("file", None, None),
    ],
)
def test_what_a_bundle_records_of_a_source(kind: str, source: str | None, recorded: str) -> None:
    assert public_source(kind, source) == recorded
