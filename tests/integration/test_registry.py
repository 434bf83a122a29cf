"""registry: distribution, end to end on an air-gapped systemd host: preflight refuses storage
too small for the images (with the sizes) before anything changes; install runs Debian's
docker-registry behind its TLS front, seeds the bundle's images by digest under their upstream
names, and a second install pushes nothing; the pull identity reads but cannot push; a client
with another CA is refused; `appliance verify` checks all of it. Images are made here."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from ansible.module_utils.common.text.formatters import bytes_to_human

from appliance.bundle.manifest import parse_manifest
from appliance.registry import images, repository, storage_bytes
from tests.fixtures.bundles import signed_bundle
from tests.fixtures.hosts import Host, start_host
from tests.fixtures.install import mounts
from tests.fixtures.lab import INTERNET_URL
from tests.fixtures.registry import layer, push_image, registry
from tests.fixtures.specs import spec_text

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

LOCAL = "ansible_connection: local\n          ansible_python_interpreter: /usr/bin/python3"
# Where the small filesystem goes, and the inventory that puts the registry's storage on it.
SMALL = "/srv/small"
PULL_AUTH = "/etc/appliance/registry/pull-auth.json"
CERTS = "/etc/appliance/registry/client-certs"
ADDRESS = "127.0.0.1:5000"
WRITES = ("PUT", "POST", "PATCH")
SEED_TASK = "Seed each image from the bundle's OCI layout, by digest"


def _install(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub", *args)


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, test_image: str
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("registry")
    base = layer({"lib/base.bin": os.urandom(300_000)})
    with registry(root / "upstream") as address:
        digests = {
            name: push_image(
                root / f"oci-{name}",
                f"{address}/team/{name}:1",
                [base, layer({f"app/{name}": os.urandom(40_000)})],
            )
            for name in ("app-a", "app-b")
        }
        refs = [f"{address}/team/{name}:1@{digest}" for name, digest in digests.items()]
        signed_bundle(
            root,
            spec_text("registry-test", stack={"registry": "distribution"}, packages=["jq"],
                      images=refs),
            "registry test",
        )  # fmt: skip
    (root / "inventories").mkdir()
    (root / "inventories" / "small.yml").write_text(
        f"all:\n  children:\n    depot:\n      hosts:\n        localhost:\n          {LOCAL}\n"
        f"          registry_data_dir: {SMALL}/registry\n"
        "          preflight_disk_reserve_bytes: 0\n"
    )
    (root / "inventories" / "rotate.yml").write_text(
        f"all:\n  children:\n    depot:\n      hosts:\n        localhost:\n          {LOCAL}\n"
        "          registry_rotate_credentials: true\n"
    )
    (root / "other.pub").write_text("")
    host = start_host(test_image, mounts(root))
    try:
        host.run("mkdir", "-p", SMALL)
        mounted = host.run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", SMALL)
        assert mounted.returncode == 0, mounted.stderr
        small = _install(host, "--inventory", "/srv/inventories/small.yml")
        sources_after_refusal = host.run("ls", "/etc/apt/sources.list.d").stdout.split()
        first = _install(host)
        writes_after_first = _writes(host)
        second = _install(host)
        writes_after_second = _writes(host)
        host.run("cp", PULL_AUTH, "/srv/old-pull-auth.json")
        rotated = _install(host, "--inventory", "/srv/inventories/rotate.yml")
        yield {"host": host, "refs": refs, "digests": digests, "small": small, "first": first,
               "second": second, "sources_after_refusal": sources_after_refusal,
               "writes": (writes_after_first, writes_after_second), "root": root,
               "rotated": rotated, "writes_after_rotation": _writes(host)}  # fmt: skip
    finally:
        host.remove()


def _writes(host: Host) -> int:
    """Requests that write (PUT, POST, PATCH) the registry's TLS front has logged."""
    log = host.run("cat", "/var/log/nginx/appliance-registry.access.log").stdout
    return sum(1 for line in log.splitlines() if any(f'"{m} ' in line for m in WRITES))


def _skopeo(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return host.run("skopeo", *args)


def test_storage_too_small_for_the_images_is_refused_with_the_sizes(
    installed: dict[str, Any],
) -> None:
    small = installed["small"]
    assert small.returncode == 32, small.stdout[-3000:] + small.stderr
    manifest = parse_manifest((installed["root"] / "bundle" / "manifest.json").read_bytes(), "t")
    needs = bytes_to_human(storage_bytes(images(manifest)))
    error = small.stderr.splitlines()[0]
    assert error.startswith(
        "Error: localhost failed at task 'Assert each filesystem has room for what it will "
        f"hold': localhost: {SMALL} has 1.00 MB free but needs {needs}: registry images "
        f"{needs} at {SMALL}/registry, plus 0.00 Bytes kept free."
    ), error
    # Nothing changed: the package sources are the host's own, no firewall, no registry.
    assert "appliance.sources" not in installed["sources_after_refusal"]


def test_install_seeds_every_image_under_its_upstream_name(installed: dict[str, Any]) -> None:
    first = installed["first"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert f"    changed: [localhost] {SEED_TASK}" in first.stdout.splitlines()
    # Two images: for each, its manifest, config and own layer; the shared base layer once.
    assert installed["writes"][0] >= 7
    catalog = installed["host"].run(
        "find", "/var/lib/appliance/registry/docker/registry/v2/repositories", "-name",
        "_manifests", "-printf", "%h\n",
    ).stdout.split()  # fmt: skip
    prefix = "/var/lib/appliance/registry/docker/registry/v2/repositories/"
    assert sorted(path.removeprefix(prefix) for path in catalog) == sorted(
        repository(ref) for ref in installed["refs"]
    )


def test_the_pull_identity_reads_each_image_by_its_digest(installed: dict[str, Any]) -> None:
    host = installed["host"]
    for ref, digest in zip(installed["refs"], installed["digests"].values(), strict=True):
        raw = subprocess.run(
            ["docker", "exec", host.name, "skopeo", "inspect", "--raw", "--cert-dir", CERTS,
             "--authfile", PULL_AUTH, f"docker://{ADDRESS}/{repository(ref)}@{digest}"],
            capture_output=True, check=False,
        )  # fmt: skip
        assert raw.returncode == 0, raw.stderr
        assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digest


def test_a_second_install_pushes_nothing_and_changes_nothing(installed: dict[str, Any]) -> None:
    second = installed["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "changed=0 failed=0" in second.stdout.splitlines()[-2], second.stdout[-3000:]
    # Not one write reached the registry: each image was found by HEAD on its digest.
    before, after = installed["writes"]
    assert after == before


def test_the_pull_identity_cannot_push(installed: dict[str, Any]) -> None:
    host, ref = installed["host"], installed["refs"][0]
    pushed = _skopeo(
        host, "copy", "--quiet", "--dest-cert-dir", CERTS, "--dest-authfile", PULL_AUTH,
        f"oci:/opt/appliance/current:{ref}", f"docker://{ADDRESS}/pull/cannot-push:1",
    )  # fmt: skip
    assert pushed.returncode != 0
    # The front refuses the first write, before the registry sees it.
    assert "initiating layer upload to /v2/pull/cannot-push/blobs/uploads/" in pushed.stderr
    assert "StatusCode: 403" in pushed.stderr, pushed.stderr
    assert host.run("test", "-e", "/var/lib/appliance/registry/docker/registry/v2/"
                    "repositories/pull").returncode == 1  # fmt: skip


def test_the_identity_files_are_root_only(installed: dict[str, Any]) -> None:
    host = installed["host"]
    listing = host.run(
        "stat", "-c", "%n %U %a", PULL_AUTH, "/etc/appliance/registry/push-auth.json",
        "/etc/appliance/registry/backend-auth.conf", "/etc/appliance/pki/ca/ca.key",
    ).stdout.split("\n")  # fmt: skip
    assert [line.split()[1:] for line in listing if line] == [["root", "600"]] * 4
    first = installed["first"].stdout + installed["second"].stdout
    for path in (PULL_AUTH, "/etc/appliance/registry/push-auth.json"):
        token = json.loads(host.run("cat", path).stdout)["auths"][ADDRESS]["auth"]
        password = base64.b64decode(token).decode().partition(":")[2]
        assert len(password) >= 40
        assert password not in first and token not in first


def test_a_client_with_another_ca_is_refused(installed: dict[str, Any]) -> None:
    host, ref = installed["host"], installed["refs"][0]
    made = host.run(
        "sh", "-c", "mkdir -p /srv/other-ca && openssl req -x509 -newkey ec -pkeyopt "
        "ec_paramgen_curve:P-256 -nodes -keyout /srv/other-ca.key -out /srv/other-ca/ca.crt "
        "-days 1 -subj /CN=other",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    refused = _skopeo(
        host, "inspect", "--raw", "--cert-dir", "/srv/other-ca", "--authfile", PULL_AUTH,
        f"docker://{ADDRESS}/{repository(ref)}@{installed['digests']['app-a']}",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "x509: certificate signed by unknown authority" in refused.stderr, refused.stderr


def test_verify_checks_every_image_and_the_pull_identity(installed: dict[str, Any]) -> None:
    verified = installed["host"].run(
        "/opt/appliance/venv/bin/appliance", "--json", "verify", "--egress-target", INTERNET_URL
    )
    document = json.loads(verified.stdout)
    checks = {c["name"]: c for c in document["checks"]}
    images = checks["registry: every image present with its digest"]
    assert images["passed"], images
    assert images["evidence"] == "2 images, each by its digest, read as the pull identity"
    push = checks["registry: the pull identity cannot push"]
    assert push["passed"] and push["evidence"] == "a blob upload as the pull identity got HTTP 403"
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_rotating_the_identities_retires_the_old_passwords(installed: dict[str, Any]) -> None:
    host, ref = installed["host"], installed["refs"][0]
    rotated = installed["rotated"]
    assert rotated.returncode == 0, rotated.stdout[-4000:] + rotated.stderr[-2000:]
    image = f"docker://{ADDRESS}/{repository(ref)}@{installed['digests']['app-a']}"
    old = _skopeo(host, "inspect", "--raw", "--cert-dir", CERTS, "--authfile",
                  "/srv/old-pull-auth.json", image)  # fmt: skip
    assert old.returncode != 0
    assert "unauthorized: authentication required" in old.stderr, old.stderr
    new = _skopeo(host, "inspect", "--raw", "--cert-dir", CERTS, "--authfile", PULL_AUTH, image)
    assert new.returncode == 0, new.stderr
    summary = rotated.stdout.splitlines()[-2]
    assert "changed=0" not in summary, rotated.stdout[-3000:]
    # The new push identity found every image there: nothing was pushed again.
    assert installed["writes_after_rotation"] == installed["writes"][1]
