"""The manifest's record of which role needs which OS package, and how inspect shows it."""

from __future__ import annotations

import json

from appliance.bundle.inspect import summary
from appliance.bundle.manifest import Component, Manifest, Target, parse_manifest

SHA = "0" * 64


def manifest(**fields: object) -> Manifest:
    return Manifest.model_validate(
        {
            "name": "unit",
            "release": "1",
            "created": "2026-01-01T00:00:00Z",
            "appliance_version": "0.1.0",
            "spec_sha256": SHA,
            "target": Target(os="debian-12", arch="amd64"),
            "stack": {"runtime": "llamacpp"},
            "components": [
                Component(name="nftables:amd64", kind="deb", version="1.0.6-2"),
                Component(name="jq:amd64", kind="deb", version="1.6-2.1"),
            ],
            "files": [],
            **fields,
        }
    )


def test_a_manifest_from_before_role_packages_still_parses() -> None:
    document = json.loads(manifest().canonical())
    del document["role_packages"]
    old = parse_manifest(json.dumps(document).encode(), "old/manifest.json")
    assert old.role_packages == {}
    assert old.required_by() == {}


def test_role_packages_are_signed_content_and_inverted_for_inspect() -> None:
    roles = {"firewall": ["nftables"], "local_repo": ["nginx-light", "python3-apt"]}
    signed = manifest(role_packages=roles)
    assert json.loads(signed.canonical())["role_packages"] == roles
    assert signed.required_by() == {
        "nftables": ["firewall"],
        "nginx-light": ["local_repo"],
        "python3-apt": ["local_repo"],
    }
    info = summary(signed)
    by_name = {c["name"]: c for c in info["components"]}
    assert by_name["nftables:amd64"]["required_by"] == ["firewall"]
    assert "required_by" not in by_name["jq:amd64"]
    # What the roles need and the bundle's repository does not carry.
    assert info["not_carried"] == {"nginx-light": ["local_repo"], "python3-apt": ["local_repo"]}
