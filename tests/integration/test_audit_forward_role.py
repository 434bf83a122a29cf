"""The gateway role with audit forwarding on an air-gapped systemd host (opt-in, slow:
APPLIANCE_TEST_FORWARD_ROLE=1): appliance-audit-forward in its hardened unit, run from the
gateway's venv (built from the installer wheel set as the build makes it), appending each audit
record to the file a SIEM agent reads; the copy verifies on the host.

The syslog/TLS path is tested on loopback (tests/unit/gateway/test_forward.py, a real TLS
collector); here the unit, its sandbox and the role's wiring are what is under test. The tiny
GGUF model behind llama.cpp gives the gateway a backend, as in test_runtime_llamacpp_role.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.hosts import ROOT, Host, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.roles import blob_file, converge, installer_wheels, single_box_topology

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_TEST_FORWARD_ROLE") != "1",
        reason="opt-in (minutes): APPLIANCE_TEST_FORWARD_ROLE=1",
    ),
]

WHEELS = Path.home() / ".cache" / "appliance" / "test-wheels"
SIEM_FILE = "/var/log/siem/appliance-audit.log"
NAME = "tiny"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import xllamacpp

    root = tmp_path_factory.mktemp("audit-forward")
    WHEELS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "-d", str(WHEELS), f"xllamacpp=={xllamacpp.__version__}"],
        check=True,
    )  # fmt: skip
    subprocess.run(["apt-get", "download", "-q", "libgomp1"], cwd=root, check=True)
    gguf = root / "tiny.gguf"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "gguf", str(gguf)],
        check=True,
        capture_output=True,
    )
    bundle = root / "bundle"
    file = blob_file(bundle, gguf)
    xllama = blob_file(bundle, next(WHEELS.glob("xllamacpp-*.whl")))
    models = [
        {"name": NAME, "format": "gguf", "source": "./tiny.gguf", "task": "chat",
         "digest": f"sha256:{file['sha256']}", "files": [file]}
    ]  # fmt: skip
    extravars = {
        "appliance_bundle_dir": "/srv/bundle",
        "appliance_models": models,
        "appliance_topology": single_box_topology("llamacpp", models),
        "appliance_wheel_sets": {
            "installer": installer_wheels(bundle, WHEELS / "resolutions"),
            "llamacpp": [xllama],
        },
        "runtime_llamacpp_ctx_size": 512,
        "runtime_llamacpp_threads": 1,
        "gateway_audit_forward_file": SIEM_FILE,
        "gateway_audit_forward_hostname": "gw-test",
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    (root / "site.yml").write_text(
        "- name: Serve the model behind the gateway, its audit forwarded\n"
        "  hosts: all\n  gather_facts: false\n  roles: [runtime_llamacpp, gateway]\n"
    )
    return root


@pytest.fixture(scope="module")
def served(bundle: Path, test_image: str) -> Iterator[Host]:
    host = start_host(test_image, {bundle / "bundle": "/srv/bundle"})
    try:
        subprocess.run(
            ["docker", "cp", str(next(bundle.glob("libgomp1_*.deb"))), f"{host.name}:/srv/g.deb"],
            check=True,
        )
        assert host.run("dpkg", "-i", "/srv/g.deb").returncode == 0
        first = converge(bundle, host.name)
        assert first.returncode == 0, first.stdout[-6000:]
        yield host
    finally:
        host.remove()


def test_every_call_reaches_the_siem_file_and_the_copy_verifies(served: Host) -> None:
    key = served.run("cat", "/var/lib/appliance/secrets/appliance-verify.key").stdout.strip()
    for _ in range(3):
        done = served.run(
            "python3", "-c", CALL, "POST", "http://127.0.0.1:8000/v1/chat/completions", key,
            json.dumps(chat(NAME)),
        )  # fmt: skip
        assert done.returncode == 0 and json.loads(done.stdout)["status"] == 200, done.stderr
    head = json.loads(served.run("cat", "/var/log/appliance/audit/audit.head").stdout)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = served.run("cat", SIEM_FILE).stdout.splitlines()
        if len(lines) == head["seq"] + 1:
            break
        time.sleep(0.5)
    assert len(lines) == head["seq"] + 1, served.run(
        "journalctl", "-u", "appliance-audit-forward"
    ).stdout
    verified = served.run(
        "/opt/appliance/gateway/bin/appliance", "--json", "audit", "verify", "--shipped", SIEM_FILE
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert (report["host"], report["last_seq"], report["last_hash"]) == (
        "gw-test",
        head["seq"],
        head["hash"],
    )


def test_the_forwarder_runs_unprivileged_and_confined(served: Host) -> None:
    unit = "appliance-audit-forward.service"
    assert served.run("systemctl", "is-active", unit).stdout == "active\n"
    pid = served.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()
    status = served.run("cat", f"/proc/{pid}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    uid = fields["Uid"].split()[0]
    assert served.run("id", "-un", uid).stdout.strip() == "appliance-gateway"
    cursor = served.run("cat", "/var/log/appliance/audit/audit.forwarded-file").stdout
    assert json.loads(cursor)["seq"] >= 0


def test_a_second_run_changes_nothing(served: Host, bundle: Path) -> None:
    again = converge(bundle, served.name)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "changed=0" in again.stdout.split("PLAY RECAP")[1], again.stdout[-4000:]
