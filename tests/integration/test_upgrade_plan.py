"""v1 -> v2 on an air-gapped single box, through the new bundle's own ``install.sh upgrade``:
v2 moves a package to a new version, adds a model and removes one. The plan (computed before
anything changes, and changing nothing with --plan-only) lists exactly those, the upgrade applies
them, verify passes, and the site's data stays: the operator's key still works, and a completion
made under v1 is still in the audit chain, which ``appliance audit verify`` accepts. Then v3,
which changes nothing: its play runs no role, yet verify passes, ``current`` moves and the audit
chain still holds.

One host and one pair of bundles for the module (tests/fixtures/upgrade_bundles.py; the depot +
node test moves between the same releases).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.hosts import harness_image, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import operator_key
from tests.fixtures.opt_in import opt_in
from tests.fixtures.probe_repo import PACKAGE, VERSIONS
from tests.fixtures.upgrade_bundles import build_releases

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    # Two bundles, an install and an upgrade with verify: several minutes on 2 cores, past CI's
    # budget for one file; run with the rollback module before a release.
    opt_in("APPLIANCE_TEST_UPGRADE", "5-15 minutes"),
]

APPLIANCE = "/opt/appliance/venv/bin/appliance"
ADMIN = "/opt/appliance/gateway/bin/appliance"
AUDIT_DIR = "/var/log/appliance/audit"
EGRESS_TARGET = "http://198.19.255.10/"  # lab range: leads nowhere, must be dropped
# Each release: its probe version and its models.
RELEASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "v1": (VERSIONS[0], ("tiny-a", "tiny-b")),
    "v2": (VERSIONS[1], ("tiny-a", "tiny-c")),
    "v3": (VERSIONS[1], ("tiny-a", "tiny-c")),  # v2's content again: a no-change upgrade
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_releases(tmp_path_factory.mktemp("upgrade-plan"), RELEASES, "upgrade plan test")


def test_upgrade_applies_exactly_the_plan_and_keeps_the_data(bundles: Path) -> None:
    image = harness_image()
    if image is None:
        pytest.fail("no harness image: run tests/harness/setup.sh")
    mounts = {bundles / label / "bundle": f"/srv/{label}" for label in RELEASES}
    host = start_host(image, {**mounts, bundles / "key.pub": "/srv/key.pub"})
    try:
        _upgrade(host.run, bundles)
    finally:
        host.remove()


def _upgrade(run: Any, bundles: Path) -> None:
    def call(key: str, model: str) -> tuple[int, str]:
        done = run("python3", "-c", CALL, "POST", "http://127.0.0.1:8000/v1/chat/completions",
                   key, json.dumps(chat(model)))  # fmt: skip
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        return reply["status"], reply["headers"]["X-Request-Id"]

    first = run("/srv/v1/install.sh", "--pubkey", "/srv/key.pub")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    key = operator_key(first.stdout)
    status, before = call(key, "tiny-b")
    assert status == 200

    # The plan, from v2's own installer: exactly the three changes, and nothing changes yet.
    shown = run("/srv/v2/install.sh", "upgrade", "--pubkey", "/srv/key.pub", "--plan-only",
                "--json")  # fmt: skip
    assert shown.returncode == 0, shown.stdout[-4000:] + shown.stderr[-4000:]
    document = json.loads(shown.stdout)
    assert document["decision"] == "upgrade"
    plan = document["plan"]
    assert plan["packages"] == {
        "added": [],
        "removed": [],
        "upgraded": [{"name": PACKAGE, "arch": "amd64", "from": VERSIONS[0], "to": VERSIONS[1]}],
        "downgraded": [],
    }
    models = plan["models"]
    assert [(m["name"], m["from"] is None) for m in models["added"]] == [("tiny-c", True)]
    assert [(m["name"], m["to"] is None) for m in models["removed"]] == [("tiny-b", True)]
    assert models["changed"] == []
    assert plan["runtime"] == {"wheel_sets": [], "files": [], "stack": {}, "nvidia_driver": None}
    assert plan["ansible_content_changed"] is False
    assert plan["hosts"] == [
        {
            "host": "localhost",
            "start": ["appliance-llamacpp@tiny-c.service"],
            "restart": ["appliance-gateway.service"],
            "stop": ["appliance-llamacpp@tiny-b.service"],
            "reboot": [],
        }
    ]
    assert plan["reboot"] is False and plan["data_migrations"] == []
    assert run("readlink", "/opt/appliance/current").stdout.strip() == "releases/v1"
    assert run("test", "-e", "/opt/appliance/releases/v2").returncode == 1

    table = run("/srv/v2/install.sh", "upgrade", "--pubkey", "/srv/key.pub", "--plan-only")
    assert table.returncode == 0, table.stderr
    assert "Upgrade plan: upgrade-test v1 (sequence 1) -> v2 (sequence 2)" in table.stdout
    assert "data migrations: none" in table.stdout

    done = run("/srv/v2/install.sh", "upgrade", "--pubkey", "/srv/key.pub", "--yes",
               "--egress-target", EGRESS_TARGET)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "verify passed" in done.stdout and "current is v2" in done.stdout
    assert run("readlink", "/opt/appliance/current").stdout.strip() == "releases/v2"
    # The installer's venv is the bundle's own (one per installer wheel set), behind the link.
    assert run("readlink", "/opt/appliance/venv").stdout.startswith("venvs/")
    listed = json.loads(run(APPLIANCE, "releases", "--json").stdout)["releases"]
    assert [(r["release"], r["state"]) for r in listed] == [("v2", "current"), ("v1", "previous")]
    # The upgrade flow moves installed packages to the release's exact versions.
    version = run("dpkg-query", "--show", "--showformat", "${Version}", PACKAGE).stdout
    assert version == VERSIONS[1]
    assert call(key, "tiny-c")[0] == 200  # the operator's key from v1 still opens v2
    assert call(key, "tiny-b")[0] != 200
    units = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "appliance-llama*")
    assert "tiny-b" not in units.stdout and "tiny-c" in units.stdout

    shown_before = run(ADMIN, "--json", "audit", "show", "--dir", AUDIT_DIR, "--request-id", before)
    assert shown_before.returncode == 0, shown_before.stderr
    assert json.loads(shown_before.stdout)["records"][0]["model"] == "tiny-b"
    audited = run(ADMIN, "audit", "verify", "--dir", AUDIT_DIR)
    assert audited.returncode == 0, audited.stdout + audited.stderr

    # v3 changes nothing: the play runs no role (upgrade_scope.py), verify still proves egress
    # denial, health and an audited completion, and only then does current move.
    same = run("/srv/v3/install.sh", "upgrade", "--pubkey", "/srv/key.pub", "--yes",
               "--egress-target", EGRESS_TARGET)  # fmt: skip
    assert same.returncode == 0, same.stdout[-4000:] + same.stderr[-4000:]
    assert "the play runs no role" in same.stdout + same.stderr
    assert "verify passed" in same.stdout and "current is v3" in same.stdout
    assert run("readlink", "/opt/appliance/current").stdout.strip() == "releases/v3"
    listed = json.loads(run(APPLIANCE, "releases", "--json").stdout)["releases"]
    states = [(r["release"], r["state"]) for r in listed]
    assert states[:2] == [("v3", "current"), ("v2", "previous")]
    # v3's files are v2's, linked rather than copied again: the same inodes.
    inodes = [
        run("sh", "-c", f"stat -c %i /opt/appliance/releases/{label}/blobs/sha256/* | sort").stdout
        for label in ("v2", "v3")
    ]
    assert inodes[0] and inodes[0] == inodes[1]
    assert call(key, "tiny-c")[0] == 200
    shown_before = run(ADMIN, "--json", "audit", "show", "--dir", AUDIT_DIR, "--request-id", before)
    assert json.loads(shown_before.stdout)["records"][0]["model"] == "tiny-b"
    audited = run(ADMIN, "audit", "verify", "--dir", AUDIT_DIR)
    assert audited.returncode == 0, audited.stdout + audited.stderr
