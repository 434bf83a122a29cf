"""Egress denial, proven: a host that reaches "the internet" (a namespace this test made)
before install cannot after it, still reaches the lan, and `appliance verify` says exactly that."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.install import mounts
from tests.fixtures.lab import INTERNET_URL, LAN_URL, lab_around

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

Run = Callable[..., subprocess.CompletedProcess[str]]

FETCH = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)"


def reaches(run: Run, url: str) -> bool:
    return run("python3", "-c", FETCH, url).returncode == 0


def test_install_denies_egress_and_verify_proves_it(
    bundle: Path,
    systemd_host: Callable[..., tuple[str, Run]],
) -> None:
    (bundle / "inventories").mkdir(exist_ok=True)
    name, run = systemd_host(mounts(bundle))
    with lab_around(name):
        assert reaches(run, INTERNET_URL), "the lab's internet must answer before install"
        assert reaches(run, LAN_URL)

        installed = run(
            "/srv/bundle/install.sh", "--pubkey", "/srv/key.pub",
            "--internal-cidr", "198.18.10.0/24",
        )  # fmt: skip
        assert installed.returncode == 0, installed.stdout + installed.stderr

        assert not reaches(run, INTERNET_URL)
        assert reaches(run, LAN_URL)

        appliance = "/opt/appliance/venv/bin/appliance"
        verified = run(
            appliance, "--json", "verify",
            "--egress-target", INTERNET_URL, "--internal-target", LAN_URL,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        document = json.loads(verified.stdout)
        checks = {c["name"]: c for c in document["checks"]}
        assert set(checks) == {
            f"egress blocked: {INTERNET_URL}",
            f"internal reachable: {LAN_URL}",
            "firewall loaded (nft table inet appliance)",
            "firewall persistent (appliance-firewall.service)",
            "package sources: only the bundle's",
        }
        assert all(c["passed"] and c["host"] == "localhost" for c in checks.values())
        dropped = int(checks["firewall loaded (nft table inet appliance)"]["evidence"].split()[2])
        assert dropped >= 1  # at least the probes above
        assert run("test", "-f", document["report"]).returncode == 0

        # Take the firewall away: verify must fail, and say which check and why.
        assert run("nft", "delete", "table", "inet", "appliance").returncode == 0
        broken = run(appliance, "verify", "--egress-target", INTERNET_URL)
        assert broken.returncode == 33
        assert f"FAIL  localhost: egress blocked: {INTERNET_URL}" in broken.stdout
        assert broken.stderr.startswith("Error: 2 of 4 checks failed\n")
        assert "localhost: firewall loaded (nft table inet appliance): no table" in broken.stderr
        assert f"localhost: egress blocked: {INTERNET_URL}: answered HTTP 200" in broken.stderr
