"""A depot and two GPU nodes on an internal network: install runs on the depot, reaches the
nodes over SSH, and the nodes install only from the depot's HTTP repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.hosts import lab_inventory
from tests.fixtures.install import mounts
from tests.fixtures.multihost import multihost_lab

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

SUBNET = "198.18.20.0/24"
DEPOT, NODES = "198.18.20.10", {"gpu-1": "198.18.20.11", "gpu-2": "198.18.20.12"}


def test_nodes_install_only_from_the_depot(bundle: Path) -> None:
    (bundle / "inventories").mkdir(exist_ok=True)
    (bundle / "inventories" / "lab.yml").write_text(lab_inventory(DEPOT, NODES))
    with multihost_lab(SUBNET, DEPOT, NODES, mounts(bundle)) as lab:
        depot, nodes = lab.depot.run, [node.run for node in lab.nodes.values()]
        result = lab.install()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "installed install-test 2026.11.7 on 3 hosts in " in result.stdout

        for node in nodes:
            source = node("cat", "/etc/apt/sources.list.d/appliance.sources").stdout
            assert f"URIs: http://{DEPOT}:8080/" in source
            assert node("ls", "/etc/apt/sources.list.d").stdout.split() == ["appliance.sources"]
            assert node("jq", "--version").stdout.strip() == "jq-1.6"
            assert (
                "policy drop" in node("nft", "list", "chain", "inet", "appliance", "output").stdout
            )
            # The nodes hold no copy of the bundle: they fetched from the depot.
            assert node("test", "-e", "/opt/appliance/releases").returncode == 1
        log = depot("cat", "/var/log/nginx/appliance-repo.access.log").stdout
        assert {line.split()[0] for line in log.splitlines()} == set(NODES.values())
        # Only the repository is served, not the rest of the bundle.
        probe = "import urllib.request as u\ntry: u.urlopen('http://127.0.0.1:8080/manifest.json')"
        status = depot("python3", "-c", probe + "\nexcept Exception as e: print(e)")
        assert "404" in status.stdout
