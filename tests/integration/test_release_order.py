"""Release order on an air-gapped systemd host: an older validly signed release is refused
(nothing staged, ``current`` unchanged) and installs only with --allow-downgrade; the current
release's own bundle again stages nothing; upgrades_from is enforced; releases lists and prunes."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.build import BuildOptions, build_bundle
from appliance.bundle.signing import keygen
from tests.fixtures.opt_in import opt_in
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    # Three releases built and installed in turn on one host: 1.5-2 minutes on 2 cores, kept out
    # of CI's 45 minutes with the other upgrade modules; run before a change to releases.py lands.
    opt_in("APPLIANCE_TEST_UPGRADE"),
]

Run = Callable[..., subprocess.CompletedProcess[str]]
Host = Callable[..., tuple[str, Run]]
APPLIANCE = "/opt/appliance/venv/bin/appliance"
# Each release's order: (sequence, upgrades_from).
ORDER: dict[str, tuple[int, list[str]]] = {"r1": (1, []), "r2": (2, []), "r3": (3, ["r1"])}


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three releases of one appliance, signed by one key, from the install tests' spec."""
    root = tmp_path_factory.mktemp("releases")
    keygen(root / "key", "release order test")
    for label, (sequence, upgrades_from) in ORDER.items():
        spec: dict[str, Any] = yaml.safe_load(
            spec_text(
                "order-test",
                label,
                stack=SYSTEMD_LLAMACPP,
                packages=["jq", "nftables", "python3-apt", "nginx-light"],
            )
        )
        spec["sequence"] = sequence
        if upgrades_from:
            spec["upgrades_from"] = upgrades_from
        (root / f"{label}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        build_bundle(
            BuildOptions(
                spec_path=root / f"{label}.yaml",
                output=root / label,
                sign_key=root / "key",
                cache=Path.home() / ".cache" / "appliance",
            )
        )
    return root


def test_release_order_on_a_host(releases: Path, systemd_host: Host) -> None:
    mounts = {releases / label: f"/srv/{label}" for label in ORDER}
    _, run = systemd_host({**mounts, releases / "key.pub": "/srv/key.pub"})

    def install(label: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run(f"/srv/{label}/install.sh", "--pubkey", "/srv/key.pub", *args)

    def current() -> str:
        return run("readlink", "/opt/appliance/current").stdout.strip()

    def states() -> list[tuple[str, str]]:
        listing = run(APPLIANCE, "releases", "--json")
        assert listing.returncode == 0, listing.stdout + listing.stderr
        return [(r["release"], r["state"]) for r in json.loads(listing.stdout)["releases"]]

    first = install("r2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "first install: release r2 (sequence 2)" in first.stdout
    record = run("cat", "/opt/appliance/releases.json").stdout

    # An older release, validly signed: refused, naming both, and nothing changes.
    older = install("r1")
    assert older.returncode == 36, older.stdout + older.stderr
    assert (
        "Error: release r1 (sequence 1) is older than the installed release r2 (sequence 2)"
        in older.stderr
    )
    assert "--allow-downgrade" in older.stderr
    assert run("test", "-e", "/opt/appliance/releases/r1").returncode == 1
    assert run("sh", "-c", "ls -A /opt/appliance | grep -c '^\\.'").stdout.strip() == "0"
    assert current() == "releases/r2"
    assert run("cat", "/opt/appliance/releases.json").stdout == record
    assert states() == [("r2", "current")]

    # The current release's own bundle again: said so, nothing staged, the play converged.
    replay = install("r2")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "release r2 is already current: this is its own bundle again" in replay.stdout
    assert "changed=0 failed=0" in replay.stdout.splitlines()[-2]
    assert current() == "releases/r2"
    assert states() == [("r2", "current")]

    # r3 upgrades only from r1: refused from r2, with the way round it.
    skipped = install("r3")
    assert skipped.returncode == 36, skipped.stdout + skipped.stderr
    assert "Error: release r3 upgrades only from r1; the installed release is r2" in skipped.stderr
    assert "Hint: install one of r1 first, then this release" in skipped.stderr
    assert run("test", "-e", "/opt/appliance/releases/r3").returncode == 1

    # Going back on purpose.
    back = install("r1", "--allow-downgrade")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "downgrade from r2 (sequence 2) to r1 (sequence 1), allowed by the operator" in (
        back.stdout
    )
    assert current() == "releases/r1"
    assert states() == [("r1", "current"), ("r2", "previous")]

    # Now r3 may follow, and r2 becomes the oldest: the one prune takes.
    onward = install("r3")
    assert onward.returncode == 0, onward.stdout + onward.stderr
    assert states() == [("r3", "current"), ("r1", "previous"), ("r2", "superseded")]
    dry = run(APPLIANCE, "releases", "prune", "--keep", "0", "--dry-run", "--json")
    assert json.loads(dry.stdout)["removed"] == ["r2"]
    assert run("test", "-d", "/opt/appliance/releases/r2").returncode == 0
    pruned = run(APPLIANCE, "releases", "prune", "--keep", "0")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    removed, freed = pruned.stdout.strip().splitlines()
    assert removed == "removed 1 release: r2"
    assert re.fullmatch(r"freed \d+(\.\d+)? (B|KiB|MiB|GiB)", freed), freed
    assert run("ls", "/opt/appliance/releases").stdout.split() == [
        "r1",
        "r1.ansible",
        "r3",
        "r3.ansible",
    ]
    assert states() == [("r3", "current"), ("r1", "previous")]
