"""Upgrades that fail, crash or are undone, on one air-gapped systemd host with a real runtime.

v2 installs and serves; v3 carries a model llama.cpp cannot load, so its upgrade fails in the
play and rolls back to v2 by itself (v2 serves again, the report names the failure); v4's upgrade
is killed (the whole controller, SIGKILL) when the runtime's servers start, and run again it
converges; ``appliance rollback`` then returns to v2 on purpose. Keys and the audit log are kept
throughout: a completion made before the first upgrade is still in one chain that verifies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.build import BuildOptions, build_bundle
from appliance.bundle.signing import keygen
from tests.fixtures.hosts import Host, harness_image, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import operator_key
from tests.fixtures.opt_in import opt_in
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    # Five plays and four verify runs with a real runtime: 10 to 30 minutes on 2 shared cores,
    # far past CI's budget for one file.
    opt_in("APPLIANCE_TEST_UPGRADE", "10-30 minutes"),
]

ROOT = Path(__file__).resolve().parents[2]
EGRESS_TARGET = "http://198.19.255.10/"  # lab range: leads nowhere, must be dropped
APPLIANCE = "/opt/appliance/venv/bin/appliance"
PYTHON = "/opt/appliance/venv/bin/python"
DRIVER = "/srv/upgrade_driver.py"
# A stand-in for a newer jq than the release's repository holds (no Debian archive carries
# two versions of one package for this test): an empty package, installed with dpkg.
NEWER_JQ = (
    "mkdir -p /srv/jq/DEBIAN && printf '%s\\n' 'Package: jq' 'Version: 99:1' "
    "'Architecture: amd64' 'Maintainer: appliance tests <dev@appliance.invalid>' "
    "'Description: stand-in for a newer jq' > /srv/jq/DEBIAN/control "
    "&& dpkg-deb --build /srv/jq /srv/jq.deb && dpkg -i /srv/jq.deb"
)
# A stand-in for bc that the site installed itself before v3 (which declares bc too): the
# rollback from v3 must leave it, while tree, which v3 alone brought, comes off.
SITE_BC = (
    "mkdir -p /srv/bc/DEBIAN && printf '%s\\n' 'Package: bc' 'Version: 0.1' "
    "'Architecture: amd64' 'Maintainer: appliance tests <dev@appliance.invalid>' "
    "'Description: stand-in for a package the site installed' > /srv/bc/DEBIAN/control "
    "&& dpkg-deb --build /srv/bc /srv/bc.deb && dpkg -i /srv/bc.deb"
)
PACKAGES = ["nftables", "python3-apt", "libgomp1", "jq"]
# v3's spec adds packages v2 lacks: a rollback from v3 removes those v3 installed.
V3_PACKAGES = [*PACKAGES, "tree", "bc"]
GOOD = {"source": "models/tiny-llama.gguf", "format": "gguf"}
# Each release: (sequence, models).
RELEASES: dict[str, tuple[int, list[dict[str, Any]]]] = {
    "v2": (2, [{"name": "tiny-llama", **GOOD}]),
    # GGUF magic and header, tensors cut off: llama.cpp refuses to load it.
    "v3": (
        3,
        [
            {"name": "tiny-llama", **GOOD},
            {"name": "tiny-broken", "source": "models/broken.gguf", "format": "gguf"},
        ],
    ),
    "v4": (4, [{"name": "tiny-llama", **GOOD}, {"name": "tiny-llama-b", **GOOD}]),
}


@dataclass
class Depot:
    host: Host
    key: str  # the operator's API key from the first install

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.host.run(*command)

    def upgrade(self, release: str, *kill_at: str) -> subprocess.CompletedProcess[str]:
        argv = [f"/srv/{release}", "/srv/key.pub", EGRESS_TARGET]
        if kill_at:
            argv += ["--kill-at", kill_at[0]]
        return self.run("setsid", "--wait", PYTHON, DRIVER, *argv)

    def current(self) -> str:
        return self.run("readlink", "/opt/appliance/current").stdout.strip()

    def states(self) -> dict[str, str]:
        listing = self.run(APPLIANCE, "releases", "--json")
        assert listing.returncode == 0, listing.stdout + listing.stderr
        return {r["release"]: r["state"] for r in json.loads(listing.stdout)["releases"]}

    def models(self) -> list[str]:
        reply = self.call("GET", "/v1/models")
        assert reply["status"] == 200, reply
        return sorted(m["id"] for m in json.loads("".join(reply["lines"]))["data"])

    def complete(self, model: str) -> str:
        reply = self.call("POST", "/v1/chat/completions", chat(model))
        assert reply["status"] == 200, reply
        return str(reply["headers"]["X-Request-Id"])

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        done = self.run(
            "python3",
            "-c",
            CALL,
            method,
            "http://127.0.0.1:8000" + path,
            self.key,
            json.dumps(body) if body is not None else "",
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def audit_ok(self) -> bool:
        done = self.run(APPLIANCE, "audit", "verify", "--dir", "/var/log/appliance/audit")
        return done.returncode == 0


def _report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-4000:] + done.stderr[-4000:]
    report: dict[str, Any] = json.loads(lines[-1])
    return report


@pytest.fixture(scope="module")
def depot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Depot]:
    image = harness_image()
    if image is None:
        pytest.fail("no harness image: run tests/harness/setup.sh")
    root = tmp_path_factory.mktemp("upgrade")
    model = root / "models" / "tiny-llama.gguf"
    subprocess.run(
        [sys.executable, ROOT / "examples" / "tiny_model.py", "gguf", model],
        check=True,
        capture_output=True,
    )
    (root / "models" / "broken.gguf").write_bytes(model.read_bytes()[:4096])
    keygen(root / "key", "upgrade test")
    for label, (sequence, models) in RELEASES.items():
        spec: dict[str, Any] = yaml.safe_load(
            spec_text(
                "upgrade-test",
                label,
                stack=SYSTEMD_LLAMACPP,
                packages=V3_PACKAGES if label == "v3" else PACKAGES,
                models=models,
                wheels={"llamacpp": ["xllamacpp==2026.10.11549"]},
            )
        )
        spec["sequence"] = sequence
        (root / f"{label}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        build_bundle(
            BuildOptions(
                spec_path=root / f"{label}.yaml",
                output=root / label,
                sign_key=root / "key",
                cache=Path.home() / ".cache" / "appliance",
            )
        )
    mounts = {root / label: f"/srv/{label}" for label in RELEASES}
    mounts[root / "key.pub"] = "/srv/key.pub"
    mounts[ROOT / "tests" / "fixtures" / "upgrade_driver.py"] = DRIVER
    host = start_host(image, mounts)
    try:
        done = host.run("/srv/v2/install.sh", "--pubkey", "/srv/key.pub")
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        yield Depot(host, operator_key(done.stdout))
    finally:
        host.remove()


def test_a_failed_upgrade_rolls_back_by_itself(depot: Depot) -> None:
    before = depot.complete("tiny-llama")
    keys = depot.run("sha256sum", "/etc/appliance/gateway/keys.json").stdout
    assert depot.run("sh", "-c", SITE_BC).returncode == 0

    done = depot.upgrade("v3")
    report = _report(done)
    assert report["outcome"] == "rolled-back", done.stdout[-4000:]
    assert (report["target"], report["origin"], report["current"]) == ("v3", "v2", "v2")
    # The report names the failure: the host, the task, and llama.cpp's model.
    assert "tiny-broken" in report["failure"], report["failure"]
    assert report["rollback_failure"] is None
    assert "rolled back: v2 runs again and verified" in done.stdout

    assert depot.current() == "releases/v2"
    assert depot.states() == {"v2": "current", "v3": "failed"}
    assert depot.models() == ["tiny-llama"]
    after = depot.complete("tiny-llama")
    assert depot.run("systemctl", "is-active", "appliance-llamacpp@tiny-broken").returncode != 0
    # What v3 alone installed came off; what the site had installed before v3 stayed.
    assert "removing what v3 alone installed of: bc, tree" in done.stdout, done.stdout[-4000:]
    assert depot.run("dpkg-query", "--show", "tree").returncode != 0
    assert depot.run("dpkg-query", "--show", "bc").returncode == 0
    assert depot.run("test", "-e", "/var/lib/appliance/packages/before-v3.list").returncode != 0
    # Data kept: the keys as they were, one audit chain with the calls before and after.
    assert depot.run("sha256sum", "/etc/appliance/gateway/keys.json").stdout == keys
    log = depot.run("sh", "-c", "cat /var/log/appliance/audit/audit*.jsonl").stdout
    assert before in log and after in log
    assert depot.audit_ok()


def test_a_killed_upgrade_run_again_converges(depot: Depot) -> None:
    killed = depot.upgrade("v4", "Run the servers")
    assert killed.returncode != 0
    assert "killing the run at task" in killed.stdout, killed.stdout[-4000:]
    # Half applied: current still v2, the record says where it stopped.
    assert depot.current() == "releases/v2"
    assert depot.states()["v4"] == "applying"
    listing = depot.run(APPLIANCE, "releases").stdout
    assert "upgrade from v2 to v4: applying since" in listing
    assert "(interrupted: the next install, upgrade or rollback settles it)" in listing

    done = depot.upgrade("v4")
    report = _report(done)
    assert report["outcome"] == "committed", done.stdout[-4000:]
    assert "finishing the upgrade to v4 that was interrupted while applying" in done.stdout
    assert depot.current() == "releases/v4"
    assert depot.states() == {"v4": "current", "v2": "previous", "v3": "failed"}
    assert depot.models() == ["tiny-llama", "tiny-llama-b"]
    depot.complete("tiny-llama-b")
    assert depot.audit_ok()


def test_rollback_on_purpose(depot: Depot) -> None:
    # As if v4 had brought a newer jq: the rollback must take it down to v2's own version.
    jq = depot.run("dpkg-query", "--show", "--showformat", "${Version}", "jq").stdout
    assert depot.run("sh", "-c", NEWER_JQ).returncode == 0
    assert depot.run("dpkg-query", "--show", "--showformat", "${Version}", "jq").stdout == "99:1"

    done = depot.run(APPLIANCE, "rollback", "--egress-target", EGRESS_TARGET, "--json")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert (report["outcome"], report["target"], report["origin"]) == ("committed", "v2", "v4")
    assert depot.current() == "releases/v2"
    assert depot.states() == {"v2": "current", "v4": "previous", "v3": "failed"}
    assert depot.models() == ["tiny-llama"]
    assert depot.run("systemctl", "is-active", "appliance-llamacpp@tiny-llama-b").returncode != 0
    depot.complete("tiny-llama")
    assert depot.audit_ok()
    assert depot.run("dpkg-query", "--show", "--showformat", "${Version}", "jq").stdout == jq

    # A release no longer on the depot is refused, naming it, and nothing changes.
    gone = depot.run(APPLIANCE, "rollback", "--to", "v1", "--egress-target", EGRESS_TARGET)
    assert gone.returncode == 31, gone.stdout + gone.stderr
    assert "Error: release v1 is not on this depot any more" in gone.stderr
    assert depot.current() == "releases/v2"
