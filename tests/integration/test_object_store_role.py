"""The object_store role end to end on an air-gapped systemd host, with a stand-in for the
MinIO binary (tests/fixtures/minio_standin_server.py, see there what it is and is not): the
server from the bundle under its hardened unit, credentials and a site CA made on the host, TLS,
the bundle's model published by digest, then runtime_llamacpp fetching it from the store through
the cache and serving it; a second run changes nothing; a changed model file stops the server.

openssl and libgomp1 stand in for the bundle's package repository (installed with dpkg)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.install.topology import plan
from tests.fixtures.hosts import ROOT, Host, start_host
from tests.fixtures.roles import blob_file, converge

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

WHEELS = Path.home() / ".cache" / "appliance" / "test-wheels"
STANDIN = ROOT / "tests" / "fixtures" / "minio_standin_server.py"
SKIP = ("--skip-tags", "site_ca_install")  # openssl comes from dpkg here, not the local repo


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import xllamacpp

    root = tmp_path_factory.mktemp("object-store-role")
    WHEELS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "-d", str(WHEELS), f"xllamacpp=={xllamacpp.__version__}",
         "pip==24.2"],
        check=True,
    )  # fmt: skip
    subprocess.run(["apt-get", "download", "-q", "libgomp1", "openssl"], cwd=root, check=True)
    gguf = root / "tiny.gguf"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "gguf", str(gguf)],
        check=True, capture_output=True,
    )  # fmt: skip
    bundle = root / "bundle"
    wheels = {w.name.split("-")[0]: blob_file(bundle, w) for w in sorted(WHEELS.glob("*.whl"))}
    file = blob_file(bundle, gguf)
    minio = blob_file(bundle, STANDIN)
    models = [{"name": "tiny", "format": "gguf", "source": "./tiny.gguf",
               "digest": f"sha256:{file['sha256']}", "files": [file]}]  # fmt: skip
    topology = plan(
        hosts=["depot-1"], depot="depot-1", gpu_nodes=["depot-1"], host_vars={},
        stack={"runtime": "llamacpp", "object_store": "minio"}, models=models,
    ).as_vars()  # fmt: skip
    extravars = {
        "appliance_name": "test",
        "appliance_bundle_dir": "/srv/bundle",
        "appliance_files": [{**minio, "name": "minio", "file_name": "minio"}],
        "appliance_models": models,
        "appliance_topology": topology,
        "appliance_wheel_sets": {"installer": [wheels["pip"]], "llamacpp": [wheels["xllamacpp"]]},
        "runtime_llamacpp_ctx_size": 512,
        "runtime_llamacpp_threads": 1,
        "runtime_llamacpp_health_retries": 15,
        "runtime_llamacpp_health_delay": 1,
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    (root / "site.yml").write_text(
        "- name: The store, then a runtime that fetches from it\n  hosts: all\n"
        "  gather_facts: false\n  roles: [object_store, runtime_llamacpp]\n"
    )
    return root


@pytest.fixture(scope="module")
def host(bundle: Path, test_image: str) -> Iterator[Host]:
    started = start_host(test_image, {bundle / "bundle": "/srv/bundle"})
    for deb in sorted(bundle.glob("*.deb")):
        subprocess.run(["docker", "cp", str(deb), f"{started.name}:/srv/{deb.name}"], check=True)
        assert started.run("dpkg", "-i", f"/srv/{deb.name}").returncode == 0
    first = converge(bundle, started.name, *SKIP)
    assert first.returncode == 0, first.stdout[-6000:]
    yield started
    started.remove()


def test_the_store_runs_hardened_with_its_secrets_root_only(host: Host) -> None:
    run = host.run
    assert run("systemctl", "is-active", "appliance-object-store.service").stdout == "active\n"
    for path, mode in [
        ("/etc/appliance/object-store/credentials.env", "600 root"),
        ("/etc/appliance/pki/ca/ca.key", "600 root"),
        ("/etc/appliance/pki/ca", "700 root"),
        ("/etc/appliance/object-store/certs/private.key", "600 appliance-minio"),
    ]:
        assert run("stat", "-c", "%a %U", path).stdout.strip() == mode, path
    pid = run("systemctl", "show", "-p", "MainPID", "--value", "appliance-object-store").stdout
    status = run("cat", f"/proc/{pid.strip()}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"


def test_the_model_is_in_the_store_by_digest_outside_the_release(host: Host, bundle: Path) -> None:
    digest = json.loads((bundle / "extravars.json").read_text())["appliance_models"][0]["files"][0]
    stored = f"/var/lib/appliance/object-store/appliance-models/sha256/{digest['sha256']}"
    assert host.run("sha256sum", stored).stdout.split()[0] == digest["sha256"]
    cached = f"/var/lib/appliance/model-cache/sha256/{digest['sha256']}"
    served = "/var/lib/appliance/models/tiny/tiny.gguf"
    assert host.run("test", cached, "-ef", served).returncode == 0  # one file, hard-linked


def test_the_runtime_serves_the_model_fetched_from_the_store(host: Host) -> None:
    answer = host.run(
        "python3", "-c",
        "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8081/v1/models').read().decode())",
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert [m["id"] for m in json.loads(answer.stdout)["data"]] == ["tiny"]


def test_a_second_run_changes_nothing(host: Host, bundle: Path) -> None:
    again = converge(bundle, host.name, *SKIP)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "changed=0" in again.stdout.split("PLAY RECAP")[1], again.stdout[-6000:]


def audit(host: Host, bundle: Path, tmp_path: Path) -> dict[str, object]:
    """The object_store role's audit task file on the host (what appliance verify runs), its
    result handed back."""
    (tmp_path / "extravars.json").write_text((bundle / "extravars.json").read_text())
    (tmp_path / "site.yml").write_text(
        "- name: Audit the store\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Audit\n      ansible.builtin.include_role:\n        name: object_store\n"
        "        tasks_from: audit\n"
        "    - name: Hand the result to the test\n      ansible.builtin.copy:\n"
        "        content: '{{ object_store_audit | to_json }}'\n"
        f"        dest: {tmp_path}/audit.json\n        mode: '0644'\n"
        "      delegate_to: localhost\n"
    )
    done = converge(tmp_path, host.name)
    assert done.returncode == 0, done.stdout[-4000:]
    result: dict[str, object] = json.loads((tmp_path / "audit.json").read_text())
    return result


def test_audit_reads_the_store_and_names_a_changed_object(
    host: Host, bundle: Path, tmp_path: Path
) -> None:
    file = json.loads((bundle / "extravars.json").read_text())["appliance_models"][0]["files"][0]
    clean = audit(host, bundle, tmp_path)
    assert (clean["objects"], clean["problems"], clean["error"]) == (1, [], "")
    stored = f"/var/lib/appliance/object-store/appliance-models/sha256/{file['sha256']}"
    saved = host.run("sh", "-c", f"cp -p {stored} /root/saved && printf x >> {stored}")
    assert saved.returncode == 0
    try:
        changed = audit(host, bundle, tmp_path)
        (problem,) = changed["problems"]  # type: ignore[misc]
        assert problem["key"] == f"sha256/{file['sha256']}"
        assert problem["problem"].startswith("bytes have sha256 ")
    finally:
        host.run("cp", "-p", "/root/saved", stored)


def test_a_changed_model_file_stops_the_server_at_start(host: Host) -> None:
    served = "/var/lib/appliance/models/tiny/tiny.gguf"
    assert (
        host.run("sh", "-c", f"printf x | dd of={served} bs=1 seek=100 conv=notrunc").returncode
        == 0
    )
    restarted = host.run("systemctl", "restart", "appliance-llamacpp@tiny.service")
    assert restarted.returncode != 0
    journal = host.run("journalctl", "--no-pager", "-o", "cat", "-u", "appliance-llamacpp@tiny")
    assert f"{served}: FAILED" in journal.stdout
