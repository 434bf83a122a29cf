"""registry: distribution across hosts, from one install: the depot runs the registry seeded
from the bundle, and a node's containerd pulls and runs an image by its upstream reference
(``ghcr.io/acme/app@sha256:...``) from the depot's registry over the lab network (TLS with the
site CA, the pull identity), while its egress is denied. A two-platform index kept with
``platforms: all`` is pulled by the index digest; kept as the default (the target's platform
alone), only its amd64 manifest's digest is there.

The lab: the depot and the node on an internal docker network (install.sh runs on the depot and
reaches the node over SSH); around the node, "the internet" is a namespace on 198.19.255.10
(tests/fixtures/lab.py), the node's default gateway, and the node's /etc/hosts sends the
upstream names there, so any attempt to reach an upstream would arrive in it. An nftables
counter in that namespace counts every packet that arrives from the node: the evidence.

The image is made here (Debian's busybox-static and a marker file) and pushed to a loopback
registry that the build knows as ghcr.io (tests/fixtures/bundles.py:
signed_bundle_from_upstreams), so the bundle records the upstream name and nothing reaches the
real host.

Opt-in (3.5-7 minutes on 2 cores, two hosts and an install):
APPLIANCE_TEST_REGISTRY_MULTIHOST=1.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.bundles import signed_bundle_from_upstreams
from tests.fixtures.hosts import Host, lab_inventory
from tests.fixtures.install import mounts
from tests.fixtures.lab import INTERNET_URL, arrivals, count_arrivals, lab_around
from tests.fixtures.multihost import INVENTORY, multihost_lab, probe
from tests.fixtures.registry import (
    layer,
    push_image,
    push_index,
    raw_manifest,
    registry,
    write_image,
)
from tests.fixtures.specs import spec_text

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_TEST_REGISTRY_MULTIHOST") != "1",
        reason="opt-in (3.5-7 minutes on 2 cores): APPLIANCE_TEST_REGISTRY_MULTIHOST=1",
    ),
]

SUBNET = "198.18.48.0/24"
DEPOT, NODE = "198.18.48.10", "198.18.48.11"
REGISTRY = f"{DEPOT}:5000"
INTERNET = "198.19.255.10"
CA = "/etc/appliance/pki/ca.crt"
PULL_AUTH = "/etc/appliance/registry/pull-auth.json"
HOSTS_DIR = "/etc/containerd/certs.d"
MARKER = b"registry multihost test\n"
MULTI_MARKER = b"amd64 of a two-platform index\n"


@dataclass(frozen=True)
class Lab:
    depot: Host
    node: Host
    internet: str  # the namespace around the node
    app: str  # ghcr.io/acme/app@sha256:..., in the bundle
    multi: str  # ghcr.io/acme/multi@sha256:<index>, in the bundle with every platform
    single: str  # ghcr.io/acme/single@sha256:<the same index>, the target's platform alone
    single_amd64: str  # ghcr.io/acme/single@sha256:<its amd64 manifest>
    absent: str  # ghcr.io/acme/absent@sha256:..., not in the bundle
    installed: subprocess.CompletedProcess[str]


def packets_from_node(lab: Lab) -> int:
    """Packets that reached "the internet" from the node since the lab began."""
    return arrivals(lab.internet)


def pull(lab: Lab, ref: str) -> subprocess.CompletedProcess[str]:
    """ctr reads no CRI setting: it takes the role's hosts directory and the pull identity (from
    the node's root-only file) on its command line, as the role's README says."""
    auth = json.loads(lab.node.run("cat", PULL_AUTH).stdout)["auths"][REGISTRY]["auth"]
    user = base64.b64decode(auth).decode()
    return lab.node.run(
        "ctr", "--namespace", "appliance-test", "images", "pull", "--hosts-dir", HOSTS_DIR,
        "--user", user, ref,
    )  # fmt: skip


def _busybox(root: Path) -> bytes:
    subprocess.run(
        ["apt-get", "download", "-q", "busybox-static"], cwd=root, check=True, capture_output=True
    )
    (deb,) = root.glob("busybox-static_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "busybox")], check=True)
    return (root / "busybox" / "bin" / "busybox").read_bytes()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("registry-multihost")
    busybox = layer({"bin/busybox": _busybox(root)}, executable=frozenset({"bin/busybox"}))
    marker = layer({"etc/appliance-image": MARKER})
    with registry(root / "upstream") as address:
        digest = push_image(root / "oci-app", f"{address}/acme/app:1", [busybox, marker])
        app = f"ghcr.io/acme/app@{digest}"
        index = push_index(
            root / "oci-multi", f"{address}/acme/multi:1",
            {"amd64": [busybox, layer({"etc/appliance-image": MULTI_MARKER})],
             "arm64": [layer({"etc/appliance-image": b"arm64\n"})]},
        )  # fmt: skip
        multi = f"ghcr.io/acme/multi@{index}"
        # The same index under another name, kept as the default keeps one: the target's
        # platform alone.
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
             "--dest-tls-verify=false", f"docker://{address}/acme/multi@{index}",
             f"docker://{address}/acme/single:1"],
            check=True, capture_output=True,
        )  # fmt: skip
        single = f"ghcr.io/acme/single@{index}"
        spec = spec_text(
            "registry-multihost", "2026.12.1", stack={"registry": "distribution"},
            packages=["jq"], images=[app, {"ref": multi, "platforms": "all"}, single],
        )  # fmt: skip
        platforms = raw_manifest(f"{address}/acme/single@{index}")["manifests"]
        assert isinstance(platforms, list)
        (amd64,) = [m["digest"] for m in platforms if m["platform"]["architecture"] == "amd64"]
        single_amd64 = f"ghcr.io/acme/single@{amd64}"
        signed_bundle_from_upstreams(root, spec, "registry multihost test", {"ghcr.io": address})
    absent = f"ghcr.io/acme/absent@{write_image(root / 'oci-absent', [marker])}"
    (root / "inventories").mkdir()
    (root / "inventories" / "lab.yml").write_text(lab_inventory(DEPOT, {"gpu-1": NODE}))
    (root / "other.pub").write_text("")
    with multihost_lab(SUBNET, DEPOT, {"gpu-1": NODE}, mounts(root)) as hosts:
        depot, node = hosts.depot, hosts.nodes["gpu-1"]
        try:
            # The harness's root file system is overlayfs, which containerd's overlayfs
            # snapshotter cannot use as its upper layer: containerd's state goes on a tmpfs.
            prepared = node.run(
                "sh", "-c",
                "mkdir -p /var/lib/containerd && mount -t tmpfs tmpfs /var/lib/containerd"
                f" && printf '{INTERNET} ghcr.io\\n{INTERNET} quay.io\\n' >> /etc/hosts",
            )  # fmt: skip
            assert prepared.returncode == 0, prepared.stderr
            with lab_around(node.name) as around:
                count_arrivals(around.internet)
                installed = hosts.install()
                yield Lab(
                    depot, node, around.internet, app, multi, single, single_amd64, absent,
                    installed,
                )  # fmt: skip
        finally:
            # The cgroups `ctr run` made under the machine's tree (the host shares it).
            node.run("sh", "-c", f"rmdir /sys/fs/cgroup/*/{node.name} 2>/dev/null")


def test_one_install_runs_the_registry_on_the_depot_and_points_the_node_at_it(lab: Lab) -> None:
    done = lab.installed
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "installed registry-multihost 2026.12.1 on 2 hosts in " in done.stdout
    assert lab.depot.run("systemctl", "is-active", "appliance-registry").stdout == "active\n"
    # The node runs no registry: it pulls from the depot's, by the depot's lab address.
    assert lab.node.run("test", "-e", "/etc/systemd/system/appliance-registry.service").returncode
    rule = lab.node.run("cat", f"{HOSTS_DIR}/ghcr.io/hosts.toml").stdout
    assert f'server = "https://{REGISTRY}/v2/ghcr.io"' in rule, rule
    assert f'[host."https://{REGISTRY}/v2/ghcr.io"]' in rule, rule
    assert lab.node.run("ls", HOSTS_DIR).stdout.split() == ["_default", "ghcr.io"]


def test_the_node_got_the_site_ca_and_a_root_only_pull_identity(lab: Lab) -> None:
    assert lab.node.run("cat", CA).stdout == lab.depot.run("cat", CA).stdout
    assert "BEGIN CERTIFICATE" in lab.node.run("cat", CA).stdout
    listing = lab.node.run(
        "stat", "-c", "%U %a", PULL_AUTH, "/etc/containerd/config.toml"
    ).stdout.splitlines()
    assert listing == ["root 600", "root 600"]
    assert lab.node.run("stat", "-c", "%U %a", "/etc/appliance/registry").stdout == "root 700\n"
    # The same pull identity as the depot's, for the depot's lab address; never printed.
    pulled = json.loads(lab.node.run("cat", PULL_AUTH).stdout)
    assert pulled == json.loads(lab.depot.run("cat", PULL_AUTH).stdout)
    token = pulled["auths"][REGISTRY]["auth"]
    password = base64.b64decode(token).decode().partition(":")[2]
    assert len(password) >= 40
    assert password not in lab.installed.stdout and token not in lab.installed.stdout
    # The CA private key stays on the depot.
    assert lab.node.run("test", "-e", "/etc/appliance/pki/ca").returncode == 1


def test_an_upstream_reference_runs_on_the_node_from_the_depots_registry(lab: Lab) -> None:
    before = packets_from_node(lab)
    pulled = pull(lab, lab.app)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    name = f"app-{uuid.uuid4().hex[:6]}"
    # The node shares the machine's cgroup tree: a parent of our own, removed at teardown.
    ran = lab.node.run(
        "ctr", "--namespace", "appliance-test", "run", "--rm", "--cgroup",
        f"/{lab.node.name}/{name}", lab.app, name, "/bin/busybox", "cat", "/etc/appliance-image",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == MARKER.decode()
    assert packets_from_node(lab) == before
    # The depot's registry served it to the node, by digest, as the pull identity.
    log = lab.depot.run("cat", "/var/log/nginx/appliance-registry.access.log").stdout
    digest = lab.app.partition("@")[2]
    served = [
        line
        for line in log.splitlines()
        if line.startswith(f"{NODE} ")
        # containerd names the upstream it asked for in the query.
        and f"GET /v2/ghcr.io/acme/app/manifests/{digest}?ns=ghcr.io " in line
        and '" 200 ' in line
    ]
    assert served, log[-3000:]
    assert " appliance-pull " in served[0], served[0]


def test_a_multi_platform_index_is_pulled_by_its_digest_and_runs_the_nodes_platform(
    lab: Lab,
) -> None:
    """platforms: all keeps the index in the bundle, so the depot's registry holds it (and each
    platform), and containerd resolves the index digest through the mirror, then picks amd64."""
    before = packets_from_node(lab)
    pulled = pull(lab, lab.multi)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    name = f"multi-{uuid.uuid4().hex[:6]}"
    ran = lab.node.run(
        "ctr", "--namespace", "appliance-test", "run", "--rm", "--cgroup",
        f"/{lab.node.name}/{name}", lab.multi, name, "/bin/busybox", "cat", "/etc/appliance-image",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == MULTI_MARKER.decode()
    assert packets_from_node(lab) == before


def test_an_index_kept_as_the_target_platform_is_pulled_by_that_platforms_digest(
    lab: Lab,
) -> None:
    """The default, platforms: target: the registry holds the amd64 manifest, not the index
    (README, "Container registry"), so the index digest is not found, inside."""
    before = packets_from_node(lab)
    failed = pull(lab, lab.single)
    assert failed.returncode != 0
    assert failed.stderr.endswith(f"{lab.single}: not found\n"), failed.stderr
    pulled = pull(lab, lab.single_amd64)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert packets_from_node(lab) == before


@pytest.mark.parametrize("registry_name", ["ghcr.io", "quay.io"])
def test_an_image_the_bundle_does_not_hold_fails_and_no_packet_leaves(
    lab: Lab, registry_name: str
) -> None:
    """ghcr.io has a rule of its own; quay.io, which the bundle does not name, takes _default."""
    ref = lab.absent.replace("ghcr.io/", f"{registry_name}/")
    before = packets_from_node(lab)
    failed = pull(lab, ref)
    assert failed.returncode != 0
    assert failed.stderr.endswith(f"{ref}: not found\n"), failed.stderr
    # Every host containerd tried (the [host] entry, then server) is the depot's registry.
    tried = set(re.findall(r'trying next host.* host="([^"]+)"', failed.stderr))
    assert tried == {REGISTRY}
    assert packets_from_node(lab) == before


def test_the_node_reaches_the_registry_port_and_no_way_out(lab: Lab) -> None:
    assert probe(lab.node, DEPOT, 5000) == "open"
    # docker-registry itself listens on the depot's loopback alone, behind the TLS front.
    behind = probe(lab.node, DEPOT, 5001).split()
    assert behind[0] in {"refused", "dropped"}, behind
    # The upstream's own address: the node's firewall drops it before it leaves.
    before = packets_from_node(lab)
    out = probe(lab.node, "ghcr.io", 443).split()
    assert out[0] == "dropped", out
    assert packets_from_node(lab) == before


def test_verify_passes_on_both_hosts(lab: Lab) -> None:
    done = lab.depot.run(
        "/opt/appliance/venv/bin/appliance", "--json", "verify", "--egress-target", INTERNET_URL,
        "--inventory", INVENTORY,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    checks = {(c["host"], c["name"]): c for c in json.loads(done.stdout)["checks"]}
    assert all(c["passed"] for c in checks.values())
    images = checks[("depot-1", "registry: every image present with its digest")]
    assert images["evidence"] == "3 images, each by its digest, read as the pull identity"
    engines = [c for (host, n), c in checks.items() if host == "gpu-1" and "engines" in n]
    assert [c["evidence"] for c in engines] == ["containerd mirrors _default, ghcr.io"]


def test_the_counter_sees_what_the_firewall_lets_out(lab: Lab) -> None:
    """The control: with one rule that lets the node out to the upstream's address, the same
    probe reaches "the internet" and the counter moves. So only the node's firewall (and the
    mirror rules) kept the counts above unchanged, not a broken lab."""
    added = lab.node.run(
        "nft", "--echo", "--handle", "insert", "rule", "inet", "appliance", "output", "ip",
        "daddr", INTERNET, "tcp", "dport", "443", "accept",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    handle = re.search(r"# handle (\d+)", added.stdout)
    assert handle, added.stdout
    try:
        before = packets_from_node(lab)
        seen = probe(lab.node, "ghcr.io", 443).split()
        # The lab's internet serves nothing on 443; what matters is that the packets arrived.
        assert seen[0] in {"refused", "dropped"}, seen
        assert packets_from_node(lab) > before
    finally:
        lab.node.run(
            "nft", "delete", "rule", "inet", "appliance", "output", "handle", handle.group(1)
        )
