"""The container_engines role on an air-gapped systemd host: Debian's containerd pulls images by
their upstream references (ghcr.io/..., Docker Hub's short names) from the local registry alone
and runs them; an image the registry does not hold fails to pull without a packet leaving.

The lab (tests/fixtures/lab.py): the registry (Debian's docker-registry with TLS and htpasswd,
tests/fixtures/secure_registry.py) runs in the lan namespace on 198.18.10.10:5000; "the
internet" is a namespace on 198.19.255.10, the host's default gateway, and the host's /etc/hosts
sends the upstream names there, so any attempt to reach an upstream would arrive in it. An
nftables counter in that namespace counts every packet from the host: the evidence.

containerd, runc and busybox-static are Debian's (apt-get download); dpkg installs them on the
host in place of the bundle's repository."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.install.verify import judge
from appliance.mirrors import local_repository, namespace, upstream_registries
from appliance.roles import ROLES_DIR
from tests.fixtures.hosts import Host, start_host
from tests.fixtures.lab import arrivals, count_arrivals, lab_around
from tests.fixtures.registry import layer, write_image
from tests.fixtures.roles import converge
from tests.fixtures.secure_registry import SecureRegistry, make_ca, secure_registry

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

REGISTRY_HOST, REGISTRY_PORT = "198.18.10.10", 5000
INTERNET = "198.19.255.10"
CA = "/etc/appliance/pki/registry-ca.crt"
PULL = "/etc/appliance/registry/pull-auth.json"
USERS = {"seed": "seed-secret-1", "puller": "pull-secret-2"}
SKIP = ("--skip-tags", "container_engines_install")  # dpkg stands in for the local repository
HOSTS_DIR = "/etc/containerd/certs.d"


@dataclass(frozen=True)
class Lab:
    host: Host
    root: Path
    registry: SecureRegistry
    internet: str  # the namespace
    app: str  # ghcr.io/acme/app@sha256:..., held by the registry
    hub: str  # busybox@sha256:... (Docker Hub's short name), held
    absent: str  # ghcr.io/acme/absent@sha256:..., not held


def packets_from_host(lab: Lab) -> int:
    """Packets that reached "the internet" from the host since the lab began."""
    return arrivals(lab.internet)


def ctr(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.host.run("ctr", "--namespace", "appliance-test", *args)


def pull(lab: Lab, ref: str, hosts_dir: str = HOSTS_DIR) -> subprocess.CompletedProcess[str]:
    """What a client of containerd's own API does: ctr reads no CRI setting, so it takes the
    hosts directory and the pull identity on its command line."""
    return ctr(
        lab, "images", "pull", "--hosts-dir", hosts_dir, "--user", f"puller:{USERS['puller']}", ref
    )


def write_extravars(root: Path, refs: list[str], ca: str = CA) -> None:
    """What the installer passes, as the registry role names it."""
    extravars = {
        "appliance_registry_host": REGISTRY_HOST,
        "appliance_registry_port": REGISTRY_PORT,
        "appliance_registry_ca_cert": ca,
        "appliance_registry_pull_auth": PULL,
        "appliance_registry_upstreams": [
            {"host": host, "namespace": namespace(host)} for host in upstream_registries(refs)
        ],
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    (root / "site.yml").write_text(
        "- name: Container engines\n  hosts: all\n  gather_facts: false\n"
        "  roles: [container_engines]\n"
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, test_image: str) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("engines")
    debs = root / "debs"
    debs.mkdir()
    subprocess.run(
        ["apt-get", "download", "-q", "containerd", "runc", "busybox-static"],
        cwd=debs, check=True, capture_output=True,
    )  # fmt: skip
    (busybox_deb,) = debs.glob("busybox-static_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(busybox_deb), str(root / "busybox")], check=True)
    busybox = (root / "busybox" / "bin" / "busybox").read_bytes()
    image = layer({"bin/busybox": busybox}, executable=frozenset({"bin/busybox"}))
    marker = layer({"etc/appliance-image": b"engines test\n"})
    host = start_host(test_image)
    try:
        # The harness's root file system is overlayfs, which overlayfs (containerd's
        # snapshotter) cannot use as its upper layer: containerd's state goes on a tmpfs.
        prepared = host.run(
            "sh", "-c",
            "mkdir -p /var/lib/containerd /srv/debs && mount -t tmpfs tmpfs /var/lib/containerd"
            f" && printf '{INTERNET} ghcr.io\\n{INTERNET} registry-1.docker.io\\n"
            f"{INTERNET} docker.io\\n{INTERNET} quay.io\\n' >> /etc/hosts",
        )  # fmt: skip
        assert prepared.returncode == 0, prepared.stderr
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["docker", "cp", str(deb), f"{host.name}:/srv/debs/"], check=True)
        installed = host.run("sh", "-c", "dpkg -i /srv/debs/runc_*.deb /srv/debs/containerd_*.deb")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        with lab_around(host.name) as network:
            count_arrivals(network.internet)
            with secure_registry(
                root / "registry", REGISTRY_HOST, REGISTRY_PORT, USERS, namespace=network.lan
            ) as registry:
                app_digest = write_image(root / "app", [image, marker])
                absent_digest = write_image(root / "absent", [marker])
                app = f"ghcr.io/acme/app@{app_digest}"
                hub = f"busybox@{app_digest}"
                for ref in (app, hub):
                    pushed = registry.push(root / "app", local_repository(ref), "seed")
                    assert pushed == app_digest
                absent = f"ghcr.io/acme/absent@{absent_digest}"
                subprocess.run(["docker", "cp", str(registry.ca), f"{host.name}:/srv/ca.crt"])
                token = base64.b64encode(f"puller:{USERS['puller']}".encode()).decode()
                address = f"{REGISTRY_HOST}:{REGISTRY_PORT}"
                credentials = json.dumps({"auths": {address: {"auth": token}}})
                placed = host.run(
                    "sh", "-c",
                    f"install -D -m 0644 /srv/ca.crt {CA} && umask 077 && mkdir -p "
                    f"{Path(PULL).parent} && printf '%s' '{credentials}' > {PULL}",
                )  # fmt: skip
                assert placed.returncode == 0, placed.stderr
                # A rule an earlier release wrote for a registry this bundle no longer names.
                (root / "stale.toml").write_text(
                    '# Managed by appliance (container_engines role)\nserver = "https://old.example"\n'
                )
                stale = host.run("mkdir", "-p", f"{HOSTS_DIR}/old.example")
                assert stale.returncode == 0, stale.stderr
                subprocess.run(
                    ["docker", "cp", str(root / "stale.toml"),
                     f"{host.name}:{HOSTS_DIR}/old.example/hosts.toml"],
                    check=True,
                )  # fmt: skip
                write_extravars(root, [app, hub, absent])
                first = converge(root, host.name, *SKIP)
                assert first.returncode == 0, first.stdout[-6000:]
                yield Lab(host, root, registry, network.internet, app, hub, absent)
    finally:
        # The cgroups `ctr run` made under the machine's tree (the host shares it).
        host.run("sh", "-c", f"rmdir /sys/fs/cgroup/*/{host.name} 2>/dev/null")
        host.remove()


def test_an_upstream_reference_is_pulled_from_the_mirror_and_runs(lab: Lab) -> None:
    before = packets_from_host(lab)
    pulled = pull(lab, lab.app)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    name = f"app-{uuid.uuid4().hex[:6]}"
    # The host shares the machine's cgroup tree: a parent of our own, removed at teardown.
    cgroup = f"/{lab.host.name}/{name}"
    ran = ctr(lab, "run", "--rm", "--cgroup", cgroup, lab.app, name,
              "/bin/busybox", "cat", "/etc/appliance-image")  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == "engines test\n"
    assert packets_from_host(lab) == before


def test_a_docker_hub_short_name_is_pulled_from_the_mirror(lab: Lab) -> None:
    before = packets_from_host(lab)
    pulled = pull(lab, f"docker.io/library/{lab.hub}")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert packets_from_host(lab) == before


def test_an_image_the_registry_does_not_hold_fails_and_no_packet_leaves(lab: Lab) -> None:
    before = packets_from_host(lab)
    failed = pull(lab, lab.absent)
    assert failed.returncode != 0
    assert failed.stderr.endswith(f"{lab.absent}: not found\n"), failed.stderr
    # Every host containerd tried (the [host] entry, then server) is the local registry.
    tried = set(re.findall(r'trying next host.* host="([^"]+)"', failed.stderr))
    assert tried == {f"{REGISTRY_HOST}:{REGISTRY_PORT}"}
    assert packets_from_host(lab) == before


def test_an_image_of_a_registry_the_bundle_does_not_name_fails_inside(lab: Lab) -> None:
    """No rule of its own: containerd takes _default, a prefix of the local registry that no
    repository can have."""
    other = lab.absent.replace("ghcr.io/", "quay.io/")
    before = packets_from_host(lab)
    failed = pull(lab, other)
    assert failed.returncode != 0
    assert failed.stderr.endswith(f"{other}: not found\n"), failed.stderr
    tried = set(re.findall(r'trying next host.* host="([^"]+)"', failed.stderr))
    assert tried == {f"{REGISTRY_HOST}:{REGISTRY_PORT}"}
    assert packets_from_host(lab) == before


def test_a_rule_without_server_would_fall_back_to_the_upstream(lab: Lab) -> None:
    """The control: a mirror given as a [host] entry alone, as containerd's docs show it, lets
    containerd try the upstream after the mirror fails, and the lab sees the packets."""
    rule = (
        f'[host."https://{REGISTRY_HOST}:{REGISTRY_PORT}/v2/ghcr.io"]\n'
        f'  capabilities = ["pull", "resolve"]\n  ca = "{CA}"\n  override_path = true\n'
    )
    written = lab.host.run(
        "sh",
        "-c",
        f"mkdir -p /root/naive/ghcr.io && printf '%s' '{rule}' > /root/naive/ghcr.io/hosts.toml",
    )
    assert written.returncode == 0
    before = packets_from_host(lab)
    failed = pull(lab, lab.absent, hosts_dir="/root/naive")
    assert failed.returncode != 0
    assert packets_from_host(lab) > before


def test_containerd_runs_with_the_cri_settings(lab: Lab) -> None:
    assert lab.host.run("systemctl", "is-active", "containerd").stdout == "active\n"
    dumped = lab.host.run("containerd", "config", "dump").stdout
    assert f'config_path = "{HOSTS_DIR}"' in dumped
    assert (
        f'[plugins."io.containerd.grpc.v1.cri".registry.configs."{REGISTRY_HOST}:{REGISTRY_PORT}".auth]'
        in dumped
    )
    assert lab.host.run("stat", "-c", "%a %U", "/etc/containerd/config.toml").stdout == "600 root\n"
    # old.example's rule, written by an earlier release, is gone.
    rules = lab.host.run("ls", HOSTS_DIR).stdout.split()
    assert rules == ["_default", "docker.io", "ghcr.io"]


def test_a_second_run_changes_nothing(lab: Lab) -> None:
    again = converge(lab.root, lab.host.name, *SKIP)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "changed=0" in again.stdout.split("PLAY RECAP")[1], again.stdout[-6000:]


def audit(lab: Lab, tmp_path: Path) -> dict[str, object]:
    """The role's audit task file (what appliance verify runs), its result handed back."""
    (tmp_path / "extravars.json").write_text((lab.root / "extravars.json").read_text())
    (tmp_path / "site.yml").write_text(
        "- name: Audit the engines\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Audit\n      ansible.builtin.include_role:\n        name: container_engines\n"
        "        tasks_from: audit\n"
        "    - name: Hand the result to the test\n      ansible.builtin.copy:\n"
        "        content: '{{ container_engines_audit | to_json }}'\n"
        f"        dest: {tmp_path}/audit.json\n        mode: '0644'\n"
        "      delegate_to: localhost\n"
    )
    done = converge(tmp_path, lab.host.name)
    assert done.returncode == 0, done.stdout[-4000:]
    result: dict[str, object] = json.loads((tmp_path / "audit.json").read_text())
    return result


def test_the_audit_names_a_rule_that_falls_back(lab: Lab, tmp_path: Path) -> None:
    rule = f"{HOSTS_DIR}/ghcr.io/hosts.toml"
    removed = lab.host.run("sh", "-c", f"cp -p {rule} /root/rule && sed -i '/^server/d' {rule}")
    assert removed.returncode == 0
    try:
        broken = audit(lab, tmp_path)
        assert broken["problems"] == [
            "containerd: ghcr.io: hosts.toml has no server: pulls fall back to ghcr.io"
        ]
    finally:
        lab.host.run("cp", "-p", "/root/rule", rule)


def test_a_wrong_ca_is_refused_before_anything_changes(lab: Lab, tmp_path: Path) -> None:
    other = make_ca(tmp_path / "other", "someone else's CA")
    subprocess.run(["docker", "cp", str(other), f"{lab.host.name}:/srv/other-ca.crt"], check=True)
    rules = lab.host.run("sh", "-c", f"cat {HOSTS_DIR}/*/hosts.toml").stdout
    write_extravars(tmp_path, [lab.app, lab.hub], ca="/srv/other-ca.crt")
    refused = converge(tmp_path, lab.host.name, *SKIP)
    assert refused.returncode != 0
    assert (
        f"the local registry https://{REGISTRY_HOST}:{REGISTRY_PORT}/v2/ could not be reached "
        "with the CA /srv/other-ca.crt (is it the CA that signed the registry's certificate?)"
    ) in refused.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stdout
    assert lab.host.run("sh", "-c", f"cat {HOSTS_DIR}/*/hosts.toml").stdout == rules


def test_a_wrong_ca_fails_the_pull_with_a_clear_message_and_verify_names_it(
    lab: Lab, tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other", "someone else's CA")
    subprocess.run(["docker", "cp", str(other), f"{lab.host.name}:/srv/other-ca.crt"], check=True)
    swapped = lab.host.run("sh", "-c", f"cp -p {CA} /root/ca.crt && cp /srv/other-ca.crt {CA}")
    assert swapped.returncode == 0
    try:
        failed = pull(lab, lab.app)
        assert failed.returncode != 0
        assert "x509: certificate signed by unknown authority" in failed.stderr
        assert audit(lab, tmp_path)["problems"] == [
            f"registry {REGISTRY_HOST}:{REGISTRY_PORT}: its certificate does not verify against "
            f"{CA} (unable to get local issuer certificate): every pull fails"
        ]
    finally:
        lab.host.run("cp", "-p", "/root/ca.crt", CA)


def test_appliance_verify_finds_every_registry_of_the_manifest_mirrored(
    lab: Lab, tmp_path: Path
) -> None:
    """The verify role (what appliance verify runs) on the host, its evidence judged as
    appliance verify judges it (a registry the manifest names without a rule, and every other
    problem: tests/unit/roles/test_engine_mirrors_module.py)."""
    extravars = {
        "appliance_report_dir": str(tmp_path),
        "appliance_verify_image_registries": ["docker.io", "ghcr.io"],
    }
    (tmp_path / "extravars.json").write_text(json.dumps(extravars))
    shutil.copy(ROLES_DIR.parent / "playbooks" / "verify.yml", tmp_path / "site.yml")
    done = converge(tmp_path, lab.host.name)
    assert done.returncode == 0, done.stdout[-4000:]
    evidence = json.loads((tmp_path / "depot-1.json").read_text())
    assert evidence["engines"]["problems"] == []
    assert evidence["engines"]["containerd"]["upstreams"]["ghcr.io"]["server"] == (
        f"https://{REGISTRY_HOST}:{REGISTRY_PORT}/v2/ghcr.io"
    )
    (check,) = [c for c in judge(evidence) if c.name.startswith("container engines")]
    assert check.passed, check.evidence
    assert check.evidence == "containerd mirrors _default, docker.io, ghcr.io"
