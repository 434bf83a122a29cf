"""The firewall role's ruleset on a host that routes (a k3s node): what its pods send beyond the
boundary is dropped and counted; inside the boundary they reach and are reached.

The ruleset is the role's own template, rendered with the variables the installer's topology
gives a k3s node, loaded with real nftables into a namespace that routes between three others
this test creates (no container, no Ansible: seconds):

    [lan] 198.18.20.10 --- 198.18.20.1 [node] 10.42.0.1 --- 10.42.0.10 [pod]
                                       [node] 198.19.20.1 --- 198.19.20.10 [wan]

lan is the internal network, wan "the internet" (its own namespace, a server on port 8080 and
an arrival counter), pod a pod on the node's cluster network. Every address is the lab's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest

from appliance.platform.k3s import CLUSTER_CIDRS
from appliance.roles import ROLES_DIR
from tests.fixtures.lab import arrivals, count_arrivals, http_server, nft

pytestmark = pytest.mark.skipif(
    subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode != 0,
    reason="needs root and ip netns",
)

INTERNAL = "198.18.20.0/24"
TEMPLATE = ROLES_DIR / "firewall" / "templates" / "appliance.nft.j2"


@dataclass(frozen=True)
class Lab:
    node: str
    lan: str
    pod: str
    wan: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _ruleset(cluster_cidrs: tuple[str, ...]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=False)  # noqa: S701 (nft, not HTML)
    env.filters["comment"] = lambda text: f"# {text}"  # Ansible's filter, for its header line
    return env.get_template(TEMPLATE.name).render(
        ansible_managed="rendered by test_firewall_forward",
        firewall_internal_cidrs=[INTERNAL],
        firewall_admin_cidrs=[INTERNAL],
        firewall_ssh_port=22,
        firewall_service_ports=[],
        firewall_service_udp_ports=[8472],
        firewall_cluster_cidrs=list(cluster_cidrs),
        firewall_cluster_tcp_ports=[6443, 10250],
        firewall_private_ports=[],
        firewall_private_sources=[],
        firewall_log_drops=False,
    )


def _load(lab: Lab, cluster_cidrs: tuple[str, ...], tmp: Path) -> None:
    path = tmp / "appliance.nft"
    path.write_text(_ruleset(cluster_cidrs))
    nft(lab.node, "-f", str(path))


def _connect(namespace: str, address: str, port: int = 8080) -> str:
    probe = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c",
         "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5);"
         " print('connected')", address, str(port)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return "connected" if probe.stdout.strip() == "connected" else "dropped"


def _dropped(lab: Lab) -> int:
    listed = json.loads(
        nft(lab.node, "--json", "list", "counter", "inet", "appliance", "forward_dropped").stdout
    )
    return int(next(x["counter"] for x in listed["nftables"] if "counter" in x)["packets"])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    made = Lab(*(f"ap-fw{name}-{tag}" for name in ("node", "lan", "pod", "wan")))
    servers = []
    try:
        for namespace in (made.node, made.lan, made.pod, made.wan):
            _ip("netns", "add", namespace)
            # IPv4 alone: a link's IPv6 neighbour discovery would count as arrivals.
            for scope in ("all", "default"):
                _ip("netns", "exec", namespace, "sysctl", "-qw",
                    f"net.ipv6.conf.{scope}.disable_ipv6=1")  # fmt: skip
            _ip("-n", namespace, "link", "set", "lo", "up")
        for name, namespace, inner, outer in (
            ("l", made.lan, "198.18.20.1", "198.18.20.10"),
            ("p", made.pod, "10.42.0.1", "10.42.0.10"),
            ("w", made.wan, "198.19.20.1", "198.19.20.10"),
        ):
            node_end, far_end = f"fw{name}0-{tag}", f"fw{name}1-{tag}"
            _ip("-n", made.node, "link", "add", node_end, "type", "veth", "peer", "name", far_end,
                "netns", namespace)  # fmt: skip
            _ip("-n", made.node, "addr", "add", f"{inner}/24", "dev", node_end)
            _ip("-n", made.node, "link", "set", node_end, "up")
            _ip("-n", namespace, "addr", "add", f"{outer}/24", "dev", far_end)
            _ip("-n", namespace, "link", "set", far_end, "up")
            # Every other namespace's way is through the node, the internet's included: were
            # the node to let a packet through, it would arrive.
            _ip("-n", namespace, "route", "add", "default", "via", inner)
        _ip("netns", "exec", made.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        count_arrivals(made.wan)
        servers = [
            http_server(made.lan, "198.18.20.10"),
            http_server(made.wan, "198.19.20.10"),
            http_server(made.pod, "10.42.0.10"),
            http_server(made.node, "198.18.20.1"),
        ]
        yield made
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for namespace in (made.node, made.lan, made.pod, made.wan):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


def test_the_lab_routes_everything_without_the_ruleset(lab: Lab) -> None:
    # The control: with no ruleset the node routes the pod to the internet, so a drop below is
    # the ruleset's doing.
    nft(lab.node, "flush", "ruleset")
    assert _connect(lab.pod, "198.19.20.10") == "connected"
    assert _connect(lab.pod, "198.18.20.10") == "connected"


def test_a_pod_reaches_nothing_beyond_the_boundary(lab: Lab, tmp_path: Path) -> None:
    _load(lab, CLUSTER_CIDRS, tmp_path)
    before_arrivals, before_dropped = arrivals(lab.wan), _dropped(lab)
    assert _connect(lab.pod, "198.19.20.10") == "dropped"
    assert arrivals(lab.wan) == before_arrivals  # not one packet reached the internet
    assert _dropped(lab) > before_dropped  # counted, for verify and auditors
    # Nor does the internet reach the pod through the node.
    assert _connect(lab.wan, "10.42.0.10") == "dropped"


def test_a_pod_and_the_internal_network_reach_each_other(lab: Lab, tmp_path: Path) -> None:
    _load(lab, CLUSTER_CIDRS, tmp_path)
    assert _connect(lab.pod, "198.18.20.10") == "connected"
    assert _connect(lab.lan, "10.42.0.10") == "connected"


def test_a_pod_reaches_the_nodes_cluster_ports_and_nothing_else_there(
    lab: Lab, tmp_path: Path
) -> None:
    _load(lab, CLUSTER_CIDRS, tmp_path)
    # 8080 stands for any port of the node the cluster's pods have no business with.
    assert _connect(lab.pod, "198.18.20.1", 8080) == "dropped"
    assert _connect(lab.lan, "198.18.20.1", 8080) == "dropped"
    server = http_server(lab.node, "198.18.20.1", 6443)
    try:
        assert _connect(lab.pod, "198.18.20.1", 6443) == "connected"
    finally:
        server.kill()
        server.wait()


def test_a_host_that_is_no_k3s_node_routes_nothing_for_a_network_it_does_not_know(
    lab: Lab, tmp_path: Path
) -> None:
    _load(lab, (), tmp_path)
    assert _connect(lab.pod, "198.18.20.10") == "dropped"
    assert _connect(lab.pod, "198.19.20.10") == "dropped"
    # Nor are the cluster's ports open on it.
    server = http_server(lab.node, "198.18.20.1", 6443)
    try:
        assert _connect(lab.pod, "198.18.20.1", 6443) == "dropped"
    finally:
        server.kill()
        server.wait()
