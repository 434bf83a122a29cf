"""Which OS packages a rollback takes off: those only the release left behind declared, read
from the two staged releases' signed manifests (the hosts' side: remove_packages.yml, exercised
in tests/integration/test_upgrade_rollback.py)."""

from __future__ import annotations

from pathlib import Path

from appliance.install.package_removal import added_by, declared
from tests.fixtures.releases import release, stage


def test_only_what_the_left_release_alone_declared(tmp_path: Path) -> None:
    back = release("v2", 2, packages=["jq", "libgomp1"], role_packages={"firewall": ["nftables"]})
    left = release(
        "v3",
        3,
        packages=["jq", "bc"],
        role_packages={"firewall": ["nftables"], "runtime_llamacpp": ["libgomp1", "tree"]},
    )
    stage(tmp_path, "v2", 2, back)
    stage(tmp_path, "v3", 3, left)
    assert declared(tmp_path, "v3") == {"jq", "bc", "nftables", "libgomp1", "tree"}
    assert added_by(tmp_path, "v3", "v2") == ["bc", "tree"]
    assert added_by(tmp_path, "v2", "v3") == []  # going forward is an upgrade's business
    assert added_by(tmp_path, "v3", "v3") == []


def test_nothing_is_removed_when_a_manifest_cannot_be_read(tmp_path: Path) -> None:
    stage(tmp_path, "v3", 3, release("v3", 3, packages=["tree"]))
    assert added_by(tmp_path, "v3", "gone") == []
    (tmp_path / "releases" / "v2").mkdir()
    (tmp_path / "releases" / "v2" / "manifest.json").write_text("{")
    assert declared(tmp_path, "v2") is None
    assert added_by(tmp_path, "v3", "v2") == []


def test_names_compare_without_their_arch_or_version(tmp_path: Path) -> None:
    """A spec may pin a version or name an arch (jq=1.6-2.1, jq:amd64): the package the
    release that comes back declares as plain jq is the same package, and stays; a pinned one
    only the left release declared comes off by its name (dpkg-query knows no version pin)."""
    back = release("v2", 2, packages=["jq", "curl=7.88"])
    left = release("v3", 3, packages=["jq:amd64", "curl", "bc=1.07.1-3", "tree:i386"])
    stage(tmp_path, "v2", 2, back)
    stage(tmp_path, "v3", 3, left)
    assert added_by(tmp_path, "v3", "v2") == ["bc", "tree:i386"]
