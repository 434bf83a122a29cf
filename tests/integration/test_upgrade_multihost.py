"""Upgrades across hosts: a depot (the gateway, the releases, upgrade.json) and one GPU node that
serves every model, on an internal lab network; ``install.sh upgrade`` runs on the depot and
reaches the node over SSH, which gets its packages and models only from the depot.

v1 -> v2 moves the probe package to a new version, adds a model and removes one, all served on
the node: the plan lists exactly those per host (packages from each host's own list, which
unit each host starts, restarts or stops), the upgrade applies them on both hosts, verify passes
on both, and the data stays (the operator's key, a completion made under v1 still in an audit
chain that verifies). v2 -> v3 takes the node's probe package back down and adds a model the
node's llama.cpp cannot load: the upgrade fails on the node, rolls every host back to v2 by
itself (the node's package from v2's repository on the depot, its units and models), v2 serves
again, and the error names the node and the model. Same releases as the single-box plan test
(tests/fixtures/upgrade_bundles.py).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.hosts import Host, lab_inventory
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import operator_key
from tests.fixtures.multihost import MultiHost, multihost_lab
from tests.fixtures.opt_in import opt_in
from tests.fixtures.probe_repo import PACKAGE, VERSIONS
from tests.fixtures.upgrade_bundles import BROKEN, build_releases

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    # Two hosts, three bundles, an install, an upgrade and a failed one with its rollback, each
    # with verify: 10 to 30 minutes on 2 shared cores.
    opt_in("APPLIANCE_TEST_UPGRADE", "10-30 minutes"),
]

SUBNET = "198.18.53.0/24"
DEPOT = "198.18.53.10"
NODE, NODE_ADDRESS = "gpu-1", "198.18.53.11"
EGRESS_TARGET = "http://198.19.255.10/"  # lab range, off the lab network: leads nowhere
APPLIANCE = "/opt/appliance/venv/bin/appliance"
AUDIT_DIR = "/var/log/appliance/audit"
# Each release: its probe version and its models (all served on the node).
RELEASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "v1": (VERSIONS[0], ("tiny-a", "tiny-b")),
    "v2": (VERSIONS[1], ("tiny-a", "tiny-c")),
    "v3": (VERSIONS[0], ("tiny-a", "tiny-c", BROKEN)),
}
EXIT_ROLLED_BACK = 38


@dataclass
class Lab:
    hosts: MultiHost
    depot: Host
    node: Host
    key: str  # the operator's, from v1's install
    before: str  # the request id of a completion made under v1

    def upgrade(self, label: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.hosts.upgrade(f"/srv/{label}/install.sh", *extra)

    def call(self, model: str) -> tuple[int, str]:
        done = self.depot.run("python3", "-c", CALL, "POST",
                              "http://127.0.0.1:8000/v1/chat/completions", self.key,
                              json.dumps(chat(model)))  # fmt: skip
        assert done.returncode == 0, done.stderr
        reply: dict[str, Any] = json.loads(done.stdout)
        return reply["status"], str(reply["headers"].get("X-Request-Id"))

    def current(self) -> str:
        return self.depot.run("readlink", "/opt/appliance/current").stdout.strip()

    def probe_version(self, host: Host) -> str:
        return host.run("dpkg-query", "--show", "--showformat", "${Version}", PACKAGE).stdout

    def units(self) -> str:
        return self.node.run(
            "systemctl", "list-units", "--all", "--plain", "--no-legend", "appliance-llama*"
        ).stdout

    def audit_ok(self) -> None:
        done = self.depot.run(APPLIANCE, "audit", "verify", "--dir", AUDIT_DIR)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = build_releases(tmp_path_factory.mktemp("upgrade-multihost"), RELEASES, "multihost")
    (root / "inventories").mkdir()
    (root / "inventories" / "lab.yml").write_text(
        lab_inventory(
            DEPOT,
            {NODE: NODE_ADDRESS},
            group_vars={"runtime_llamacpp_ctx_size": "512", "runtime_llamacpp_threads": "1"},
        )
    )
    mounts = {root / label / "bundle": f"/srv/{label}" for label in RELEASES}
    mounts[root / "key.pub"] = "/srv/key.pub"
    mounts[root / "inventories"] = "/srv/inventories"
    with multihost_lab(SUBNET, DEPOT, {NODE: NODE_ADDRESS}, mounts) as hosts:
        first = hosts.install("/srv/v1/install.sh")
        assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
        lab = Lab(hosts, hosts.depot, hosts.nodes[NODE], operator_key(first.stdout), "")
        status, lab.before = lab.call("tiny-b")
        assert status == 200
        yield lab


def _probe(old: str, new: str) -> list[dict[str, str]]:
    return [{"name": PACKAGE, "arch": "amd64", "from": old, "to": new}]


def test_v1_to_v2_applies_the_plan_on_every_host_and_keeps_the_data(lab: Lab) -> None:
    shown = lab.upgrade("v2", "--plan-only", "--json")
    assert shown.returncode == 0, shown.stdout[-4000:] + shown.stderr[-4000:]
    plan = json.loads(shown.stdout)["plan"]
    assert plan["packages"]["upgraded"] == _probe(VERSIONS[0], VERSIONS[1])
    assert [plan["packages"][k] for k in ("added", "removed", "downgraded")] == [[], [], []]
    models = plan["models"]
    assert [(m["name"], m["from"] is None) for m in models["added"]] == [("tiny-c", True)]
    assert [(m["name"], m["to"] is None) for m in models["removed"]] == [("tiny-b", True)]
    assert models["changed"] == []
    # Per host: the depot restarts the gateway (its routes change), the node starts and stops a
    # model's server; each moves the probe package, which both install.
    assert plan["hosts"] == [
        {
            "host": "depot-1",
            "start": [],
            "restart": ["appliance-gateway.service"],
            "stop": [],
            "reboot": [],
        },
        {
            "host": NODE,
            "start": ["appliance-llamacpp@tiny-c.service"],
            "restart": [],
            "stop": ["appliance-llamacpp@tiny-b.service"],
            "reboot": [],
        },
    ]
    moved = {"added": [], "removed": [], "upgraded": _probe(VERSIONS[0], VERSIONS[1]),
             "downgraded": []}  # fmt: skip
    assert plan["host_packages"] == {"depot-1": moved, NODE: moved}
    assert lab.current() == "releases/v1"

    done = lab.upgrade("v2", "--yes", "--egress-target", EGRESS_TARGET)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-4000:]
    assert "on 2 host(s); verify passed" in done.stdout and "current is v2" in done.stdout
    assert lab.current() == "releases/v2"
    for host in (lab.depot, lab.node):
        assert lab.probe_version(host) == VERSIONS[1]
    models = lab.node.run("ls", "/var/lib/appliance/models").stdout.split()
    assert {"tiny-a", "tiny-c"} <= set(models), models
    units = lab.units()
    assert "tiny-b" not in units and "tiny-c" in units
    assert lab.call("tiny-c")[0] == 200  # the operator's key from v1 opens v2, on the node
    assert lab.call("tiny-b")[0] != 200
    shown_before = lab.depot.run(APPLIANCE, "--json", "audit", "show", "--dir", AUDIT_DIR,
                                 "--request-id", lab.before)  # fmt: skip
    assert shown_before.returncode == 0, shown_before.stderr
    assert json.loads(shown_before.stdout)["records"][0]["model"] == "tiny-b"
    lab.audit_ok()


def test_v2_to_v3_fails_on_the_node_and_rolls_every_host_back(lab: Lab) -> None:
    if lab.current() != "releases/v2":
        pytest.skip("needs v2 current (the v1 -> v2 test)")
    keys = lab.depot.run("sha256sum", "/etc/appliance/gateway/keys.json").stdout

    done = lab.upgrade("v3", "--yes", "--egress-target", EGRESS_TARGET)
    assert done.returncode == EXIT_ROLLED_BACK, done.stdout[-5000:] + done.stderr[-4000:]
    error = done.stderr
    # The report names the failure (the node, and the model llama.cpp refused), and that the
    # rollback held.
    assert "Error: upgrade to v3 failed: " in error, error
    assert NODE in error and BROKEN in error, error
    assert "every host was returned to v2, which verified: the rollback held" in error, error

    assert lab.current() == "releases/v2"
    listed = json.loads(lab.depot.run(APPLIANCE, "releases", "--json").stdout)["releases"]
    assert {r["release"]: r["state"] for r in listed} == {
        "v2": "current",
        "v1": "previous",
        "v3": "failed",
    }
    # The node is back on v2: its package from v2's repository (v3 had taken it down), no server
    # for the broken model, v2's models served through the depot's gateway.
    assert lab.probe_version(lab.node) == VERSIONS[1]
    assert lab.probe_version(lab.depot) == VERSIONS[1]
    assert lab.node.run("systemctl", "is-active", f"appliance-llamacpp@{BROKEN}").returncode != 0
    for model in ("tiny-a", "tiny-c"):
        assert lab.call(model)[0] == 200, model
    assert lab.depot.run("sha256sum", "/etc/appliance/gateway/keys.json").stdout == keys
    phase = json.loads(lab.depot.run("cat", "/opt/appliance/upgrade.json").stdout)
    assert (phase["phase"], phase["target"], phase["origin"]) == ("rolled-back", "v3", "v2")
    log = lab.depot.run("sh", "-c", f"cat {AUDIT_DIR}/audit*.jsonl").stdout
    assert lab.before in log
    lab.audit_ok()
