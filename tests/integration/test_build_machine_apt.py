"""Two build "machines" (tests/fixtures/build_machines.py) build a spec with OS packages: the
bundle's apt repository, signed with one --repo-key at one SOURCE_DATE_EPOCH, is the same byte
for byte, signatures included, and neither machine nor the secret key is named in any file.

Resolves and fetches jq's closure from Debian's archive (``$DEBIAN_MIRROR``, or the mirror this
machine's apt sources use), once per machine: each has its own cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle import layout
from tests.fixtures.build_machines import APT_SPEC, build_on_two_machines, make_repo_key
from tests.fixtures.debian_mirror import debian_mirror


@pytest.mark.network
@pytest.mark.slow
def test_two_machines_with_one_repo_key_build_the_same_apt_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With OS packages the bundle carries a signed apt repository: one --repo-key and one
    SOURCE_DATE_EPOCH on both machines give it byte for byte, signatures included."""
    repo_key = make_repo_key(tmp_path / "repo-key.asc")
    monkeypatch.setenv("DEBIAN_MIRROR", debian_mirror())  # the same archive on both
    alice, bob, secrets, _ = build_on_two_machines(tmp_path, monkeypatch, APT_SPEC, repo_key)
    repo = sorted(name for name in alice if name.startswith(f"{layout.REPO}/"))
    assert {f"{layout.REPO}/{name}" for name in ("InRelease", "Release.gpg", "Release")} <= set(
        repo
    )
    assert alice.keys() == bob.keys()
    for name in repo:
        assert alice[name] == bob[name], name
    assert alice == bob
    armored = [line for line in repo_key.read_text().splitlines() if len(line) == 64]
    for name, data in alice.items():
        for secret in [*secrets, str(tmp_path), *armored[:3]]:
            assert secret.encode() not in data, (secret, name)
    manifest = json.loads(alice[layout.MANIFEST])
    assert any(c["name"].startswith("jq:") for c in manifest["components"])
