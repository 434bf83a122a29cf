"""registry: harbor, end to end on one air-gapped systemd host, with a STAND-IN for Harbor's
offline installer (tests/fixtures/harbor_installer: its layout and steps, but Debian's
docker-registry behind a Python TLS front that answers Harbor's /api/v2.0 and enforces robot
permissions on /v2; not Harbor's images, which cannot be fetched here).

Install runs the harbor role in the registry's place: the installer from the bundle, harbor.yml
checked by the stand-in's prepare against the v2.15.2 template's keys, a project per upstream
registry and the two robots through Harbor's API, then the registry role's own seeding by
digest; the container_engines role points containerd at it. Shown: the images in their
upstream's project, read back by digest; containerd pulls and runs an image by its upstream
reference with no fallback; the pull robot cannot push; a second install pushes nothing and
changes nothing; a third with registry_rotate_credentials gives the robots new secrets and
pushes nothing; appliance verify passes.

Opt-in (5.5-9.5 minutes on 2 shared cores: the bundle carries Debian's docker engine and compose as
the role installs them, and the host runs three installs): APPLIANCE_TEST_HARBOR=1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.registry import repository
from tests.fixtures.bundles import signed_bundle_from_upstreams
from tests.fixtures.harbor_installer import build_installer
from tests.fixtures.hosts import Host, start_host
from tests.fixtures.install import mounts
from tests.fixtures.lab import INTERNET_URL
from tests.fixtures.registry import layer, push_image, registry, write_image
from tests.fixtures.specs import spec_text

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_TEST_HARBOR") != "1",
        reason="opt-in (5.5-9.5 minutes on 2 cores): APPLIANCE_TEST_HARBOR=1",
    ),
]

ADDRESS = "127.0.0.1:5000"
PULL_AUTH = "/etc/appliance/registry/pull-auth.json"
PUSH_AUTH = "/etc/appliance/registry/push-auth.json"
CERTS = "/etc/appliance/registry/client-certs"
HOSTS_DIR = "/etc/containerd/certs.d"
STATE = "/var/lib/appliance/registry/standin-core.json"
ACCESS_LOG = "/var/log/harbor-standin-access.log"
STORAGE = "/var/lib/appliance/registry/registry/docker/registry/v2/repositories/"
MARKER = b"harbor test\n"
SEED_TASK = "Seed each image from the bundle's OCI layout, by digest"
WRITES = ("PUT", "POST", "PATCH")


def _busybox(root: Path) -> bytes:
    subprocess.run(
        ["apt-get", "download", "-q", "busybox-static"], cwd=root, check=True, capture_output=True
    )
    (deb,) = root.glob("busybox-static_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "busybox")], check=True)
    return (root / "busybox" / "bin" / "busybox").read_bytes()


def _install(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub", *args)


def _writes(host: Host) -> int:
    """/v2 requests that write, as the stand-in's proxy logged them."""
    log = host.run("cat", ACCESS_LOG).stdout
    return sum(1 for line in log.splitlines() if line.split(" ", 1)[0] in WRITES)


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, test_image: str
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("harbor")
    installer, sha256 = build_installer(root)
    busybox = layer({"bin/busybox": _busybox(root)}, executable=frozenset({"bin/busybox"}))
    marker = layer({"etc/appliance-image": MARKER})
    with registry(root / "upstream") as address:
        app = push_image(root / "oci-app", f"{address}/acme/app:1", [busybox, marker])
        tool = push_image(root / "oci-tool", f"{address}/team/tool:1",
                          [layer({"tool": os.urandom(50_000)})])  # fmt: skip
        refs = [f"ghcr.io/acme/app@{app}", f"quay.io/team/tool@{tool}"]
        spec = spec_text(
            "harbor-test", stack={"registry": "harbor"},
            # The stand-in's services: Debian's registry, and PyYAML for its prepare.
            packages=["docker-registry", "python3-yaml"],
            files=[{"name": "harbor-offline-installer", "url": installer.as_uri(),
                    "sha256": sha256}],
            images=refs,
        )  # fmt: skip
        signed_bundle_from_upstreams(
            root, spec, "harbor test", {"ghcr.io": address, "quay.io": address}
        )
    absent = f"ghcr.io/acme/absent@{write_image(root / 'oci-absent', [marker])}"
    (root / "inventories").mkdir()
    (root / "inventories" / "rotate.yml").write_text(
        "all:\n  children:\n    depot:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n"
        "          ansible_python_interpreter: /usr/bin/python3\n"
        "          registry_rotate_credentials: true\n"
    )
    (root / "other.pub").write_text("")
    host = start_host(test_image, mounts(root))
    try:
        # containerd's overlayfs snapshotter cannot sit on the harness's overlayfs root.
        prepared = host.run(
            "sh", "-c", "mkdir -p /var/lib/containerd && mount -t tmpfs tmpfs /var/lib/containerd"
        )
        assert prepared.returncode == 0, prepared.stderr
        first = _install(host)
        writes_after_first = _writes(host)
        second = _install(host)
        writes_after_second = _writes(host)
        host.run("cp", PULL_AUTH, "/srv/old-pull-auth.json")
        rotated = _install(host, "--inventory", "/srv/inventories/rotate.yml")
        yield {"host": host, "refs": refs, "digests": [app, tool], "absent": absent,
               "first": first, "second": second, "rotated": rotated,
               "writes": (writes_after_first, writes_after_second, _writes(host))}  # fmt: skip
    finally:
        host.run("sh", "-c", f"rmdir /sys/fs/cgroup/*/{host.name} 2>/dev/null")
        host.remove()


def test_install_runs_harbor_from_the_bundles_installer(installed: dict[str, Any]) -> None:
    first, host = installed["first"], installed["host"]
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert "changed: [localhost] Run Harbor's installer" in first.stdout, first.stdout[-4000:]
    for unit in ("harbor-standin-core", "harbor-standin-registry"):
        assert host.run("systemctl", "is-active", unit).stdout == "active\n"
    # No registry role: Harbor took its place.
    assert host.run("test", "-e", "/etc/systemd/system/appliance-registry.service").returncode


def test_one_project_per_upstream_registry_and_two_robots(installed: dict[str, Any]) -> None:
    state = json.loads(installed["host"].run("cat", STATE).stdout)
    assert sorted(state["projects"]) == ["ghcr.io", "quay.io"]
    assert all(p["public"] is False for p in state["projects"].values())
    robots = {r["name"]: r for r in state["robots"].values()}
    assert sorted(robots) == ["robot$appliance-pull", "robot$appliance-push"]
    actions = {
        name: sorted({a["action"] for p in r["permissions"] for a in p["access"]})
        for name, r in robots.items()
    }
    assert actions == {"robot$appliance-pull": ["pull"], "robot$appliance-push": ["pull", "push"]}


def test_images_are_seeded_by_digest_into_their_upstreams_project(
    installed: dict[str, Any],
) -> None:
    host, first = installed["host"], installed["first"]
    assert f"    changed: [localhost] {SEED_TASK}" in first.stdout.splitlines()
    found = host.run("find", STORAGE, "-name", "_manifests", "-printf", "%h\n").stdout.split()
    assert sorted(p.removeprefix(STORAGE) for p in found) == sorted(
        repository(ref) for ref in installed["refs"]
    )
    # Read back by digest as the pull robot, through Harbor's front: the very bytes.
    for ref, digest in zip(installed["refs"], installed["digests"], strict=True):
        raw = subprocess.run(
            ["docker", "exec", host.name, "skopeo", "inspect", "--raw", "--cert-dir", CERTS,
             "--authfile", PULL_AUTH, f"docker://{ADDRESS}/{repository(ref)}@{digest}"],
            capture_output=True, check=False,
        )  # fmt: skip
        assert raw.returncode == 0, raw.stderr
        assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digest
    # The push robot seeded them, and only it wrote.
    log = host.run("cat", ACCESS_LOG).stdout.splitlines()
    writers = {line.rsplit(" ", 1)[1] for line in log if line.split(" ", 1)[0] in WRITES}
    assert writers == {"robot$appliance-push"}, log[-20:]


def test_containerd_pulls_by_the_upstream_reference_from_harbor_alone(
    installed: dict[str, Any],
) -> None:
    host, app = installed["host"], installed["refs"][0]
    rule = host.run("cat", f"{HOSTS_DIR}/ghcr.io/hosts.toml").stdout
    assert f'server = "https://{ADDRESS}/v2/ghcr.io"' in rule, rule
    assert sorted(host.run("ls", HOSTS_DIR).stdout.split()) == ["_default", "ghcr.io", "quay.io"]
    token = json.loads(host.run("cat", PULL_AUTH).stdout)["auths"][ADDRESS]["auth"]
    user = base64.b64decode(token).decode()
    assert user.startswith("robot$appliance-pull:")
    pulled = host.run("ctr", "--namespace", "appliance-test", "images", "pull", "--hosts-dir",
                      HOSTS_DIR, "--user", user, app)  # fmt: skip
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    name = f"app-{uuid.uuid4().hex[:6]}"
    ran = host.run(
        "ctr", "--namespace", "appliance-test", "run", "--rm", "--cgroup",
        f"/{host.name}/{name}", app, name, "/bin/busybox", "cat", "/etc/appliance-image",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == MARKER.decode()
    digest = app.partition("@")[2]
    log = host.run("cat", ACCESS_LOG).stdout
    assert f"GET /v2/ghcr.io/acme/app/manifests/{digest}?ns=ghcr.io 200 robot$appliance-pull" in (
        log
    ), log[-2000:]
    # An image Harbor does not hold fails inside: no fallback to ghcr.io.
    missing = host.run("ctr", "--namespace", "appliance-test", "images", "pull", "--hosts-dir",
                       HOSTS_DIR, "--user", user, installed["absent"])  # fmt: skip
    assert missing.returncode != 0
    assert missing.stderr.rstrip().endswith(f"{installed['absent']}: not found"), missing.stderr
    tried = [line for line in missing.stderr.splitlines() if "trying next host" in line]
    assert tried and all(line.endswith(f'host="{ADDRESS}"') for line in tried), missing.stderr
    absent = installed["absent"].partition("@")[2]
    log = host.run("cat", ACCESS_LOG).stdout
    assert f"/v2/ghcr.io/acme/absent/manifests/{absent}?ns=ghcr.io 404 robot$appliance-pull" in (
        log
    ), log[-2000:]


def test_the_pull_robot_cannot_push(installed: dict[str, Any]) -> None:
    host, ref = installed["host"], installed["refs"][0]
    pushed = host.run(
        "skopeo", "copy", "--quiet", "--dest-cert-dir", CERTS, "--dest-authfile", PULL_AUTH,
        f"oci:/opt/appliance/current:{ref}", f"docker://{ADDRESS}/ghcr.io/pull/cannot-push:1",
    )  # fmt: skip
    assert pushed.returncode != 0
    # Harbor's front refuses the first write, before the registry behind it sees it.
    assert "initiating layer upload to /v2/ghcr.io/pull/cannot-push/blobs/uploads/" in (
        pushed.stderr
    )
    assert "denied: robot may not push in project ghcr.io" in pushed.stderr, pushed.stderr
    log = host.run("cat", ACCESS_LOG).stdout
    assert "POST /v2/ghcr.io/pull/cannot-push/blobs/uploads/ 403 robot$appliance-pull" in log
    assert host.run("test", "-e", f"{STORAGE}ghcr.io/pull").returncode == 1


def test_docker_s_networks_are_the_pool_the_firewall_counts_inside(
    installed: dict[str, Any],
) -> None:
    host = installed["host"]
    daemon = json.loads(host.run("cat", "/etc/docker/daemon.json").stdout)
    assert daemon["bip"] == "172.30.0.1/24"
    assert daemon["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}]
    cluster = host.run("nft", "list", "set", "inet", "appliance", "cluster_v4").stdout
    assert "172.30.0.0/16" in cluster, cluster


def test_a_second_install_pushes_nothing_and_changes_nothing(installed: dict[str, Any]) -> None:
    second = installed["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "changed=0 failed=0" in second.stdout.splitlines()[-2], second.stdout[-3000:]
    before, after, _ = installed["writes"]
    assert before >= 5 and after == before


def test_rotating_gives_both_robots_new_secrets_and_pushes_nothing(
    installed: dict[str, Any],
) -> None:
    host, rotated = installed["host"], installed["rotated"]
    assert rotated.returncode == 0, rotated.stdout[-4000:] + rotated.stderr[-2000:]
    image = f"docker://{ADDRESS}/{repository(installed['refs'][0])}@{installed['digests'][0]}"
    old = host.run("skopeo", "inspect", "--raw", "--cert-dir", CERTS, "--authfile",
                   "/srv/old-pull-auth.json", image)  # fmt: skip
    assert old.returncode != 0
    assert "unauthorized" in old.stderr, old.stderr
    new = host.run(
        "skopeo", "inspect", "--raw", "--cert-dir", CERTS, "--authfile", PULL_AUTH, image
    )
    assert new.returncode == 0, new.stderr
    # The new push robot found every image there: nothing was pushed again.
    assert installed["writes"][2] == installed["writes"][1]


def test_the_secrets_are_root_only_and_never_printed(installed: dict[str, Any]) -> None:
    host = installed["host"]
    files = (
        PULL_AUTH,
        PUSH_AUTH,
        "/etc/appliance/harbor/robots.json",
        "/etc/appliance/harbor/passwords.json",
        "/opt/appliance/harbor/harbor/harbor.yml",
    )
    listing = host.run("stat", "-c", "%U %a", *files).stdout.splitlines()
    assert listing == ["root 600"] * len(files)
    printed = "".join(installed[run].stdout for run in ("first", "second", "rotated"))
    robots = json.loads(host.run("cat", "/etc/appliance/harbor/robots.json").stdout)
    passwords = json.loads(host.run("cat", "/etc/appliance/harbor/passwords.json").stdout)
    for secret in [robots["push"]["secret"], robots["pull"]["secret"], *passwords.values()]:
        assert len(secret) >= 32 and secret not in printed


def test_verify_checks_every_image_and_the_pull_robot(installed: dict[str, Any]) -> None:
    verified = installed["host"].run(
        "/opt/appliance/venv/bin/appliance", "--json", "verify", "--egress-target", INTERNET_URL
    )
    checks = {c["name"]: c for c in json.loads(verified.stdout)["checks"]}
    images = checks["registry: every image present with its digest"]
    assert images["passed"], images
    assert images["evidence"] == "2 images, each by its digest, read as the pull identity"
    push = checks["registry: the pull identity cannot push"]
    assert push["passed"], push
    assert verified.returncode == 0, verified.stdout + verified.stderr
