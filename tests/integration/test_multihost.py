"""A depot and two GPU nodes on an internal network: install runs on the depot, reaches the
nodes over SSH, and the nodes install only from the depot's HTTP repository."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.hosts import Host, authorize_ssh, lab_inventory
from tests.fixtures.install import mounts

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

Run = Callable[..., subprocess.CompletedProcess[str]]
SUBNET = "198.18.20.0/24"
DEPOT, NODES = "198.18.20.10", {"gpu-1": "198.18.20.11", "gpu-2": "198.18.20.12"}


def test_nodes_install_only_from_the_depot(
    bundle: Path, lab_network: Callable[[str], str], systemd_host: Callable[..., tuple[str, Run]]
) -> None:
    (bundle / "inventories").mkdir(exist_ok=True)
    (bundle / "inventories" / "lab.yml").write_text(lab_inventory(DEPOT, NODES))
    network = lab_network(SUBNET)
    depot_name, depot = systemd_host(mounts(bundle), network=network, address=DEPOT)
    started = {systemd_host(network=network, address=a)[0]: a for a in NODES.values()}
    authorize_ssh(Host(depot_name), {Host(name): a for name, a in started.items()})
    nodes = [Host(name).run for name in started]

    result = depot(
        "/srv/bundle/install.sh",
        "--pubkey",
        "/srv/key.pub",
        "--inventory",
        "/srv/inventories/lab.yml",
        "--internal-cidr",
        SUBNET,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed install-test 2026.11.7 on 3 hosts in " in result.stdout

    for node in nodes:
        source = node("cat", "/etc/apt/sources.list.d/appliance.sources").stdout
        assert f"URIs: http://{DEPOT}:8080/" in source
        assert node("ls", "/etc/apt/sources.list.d").stdout.split() == ["appliance.sources"]
        assert node("jq", "--version").stdout.strip() == "jq-1.6"
        assert "policy drop" in node("nft", "list", "chain", "inet", "appliance", "output").stdout
        # The nodes hold no copy of the bundle: they fetched from the depot.
        assert node("test", "-e", "/opt/appliance/releases").returncode == 1
    log = depot("cat", "/var/log/nginx/appliance-repo.access.log").stdout
    assert {line.split()[0] for line in log.splitlines()} == set(NODES.values())
    # Only the repository is served, not the rest of the bundle.
    probe = "import urllib.request as u\ntry: u.urlopen('http://127.0.0.1:8080/manifest.json')"
    status = depot("python3", "-c", probe + "\nexcept Exception as e: print(e)")
    assert "404" in status.stdout
