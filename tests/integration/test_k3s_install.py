"""orchestrator: k3s, end to end on one air-gapped systemd host, from a real bundle by its own
install.sh: the registry (Debian's docker-registry, seeded from the bundle), k3s as the server,
the model as a Deployment of the bundle's runtime image by digest, and the audited gateway in
front of it.

k3s itself is a STAND-IN (tests/fixtures/k3s_standin/: the binary, the install script and the
airgap images tarball, each labelled), carried as the spec's files: entries with their sha256
computed here, so the k3s role's real code path runs: the files checked by digest, the token,
config.yaml and registries.yaml, the unit written by the install script and started, the
manifests deployed, the nodes and workloads waited for through `k3s kubectl get -o json`. No
container runs: the stand-in serves each Deployment with a canned OpenAI-style server on the
planned host address and port. What stays untested here is listed in the README ("Container
platform").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.bundle.manifest import parse_manifest
from tests.fixtures.bundles import signed_bundle
from tests.fixtures.hosts import ROOT, Host, harness_image, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import operator_key
from tests.fixtures.registry import layer, push_image, registry
from tests.fixtures.specs import spec_text

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_TEST_K3S") != "1",
        reason="opt-in (about 2-3 minutes on 2 cores): APPLIANCE_TEST_K3S=1",
    ),
]

STANDIN = ROOT / "tests" / "fixtures" / "k3s_standin"
FILES = {"k3s": "k3s.py", "k3s-airgap-images": "k3s-airgap-images.txt",
         "k3s-install.sh": "install.sh"}  # fmt: skip
REGISTRY = "127.0.0.1:5000"
TOKEN = "/etc/appliance/k3s/token"  # noqa: S105 (a path)
AUDIT_DIR = "/var/log/appliance/audit"


def _file(name: str, source: Path) -> dict[str, str]:
    return {
        "name": name,
        "url": f"file://{source}",
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }


@pytest.fixture(scope="module")
def k3s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    image = harness_image()
    if image is None:
        pytest.fail("no harness image: run tests/harness/setup.sh")
    root = tmp_path_factory.mktemp("k3s")
    model = root / "models" / "tiny-llama.gguf"
    subprocess.run([sys.executable, ROOT / "examples" / "tiny_model.py", "gguf", model],
                   check=True, capture_output=True)  # fmt: skip
    with registry(root / "upstream") as address:
        digest = push_image(root / "oci-llama", f"{address}/ggml-org/llama.cpp:server",
                            [layer({"app/llama-server": os.urandom(20_000)})])  # fmt: skip
        ref = f"{address}/ggml-org/llama.cpp:server@{digest}"
        spec = spec_text(
            "k3s-test",
            "2026.12.1",
            stack={"registry": "distribution", "orchestrator": "k3s", "runtime": "llamacpp",
                   "object_store": "filesystem"},
            packages=["nftables", "python3-apt"],
            files=[_file(name, STANDIN / source) for name, source in FILES.items()],
            images=[ref],
            models=[{"name": "tiny-llama", "source": "models/tiny-llama.gguf", "format": "gguf"}],
        )  # fmt: skip
        signed_bundle(root, spec, "k3s test")
    host = start_host(image, {root / "bundle": "/srv/bundle", root / "key.pub": "/srv/key.pub"})
    try:
        first = host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
        assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
        key = operator_key(first.stdout)
        second = host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
        manifest = parse_manifest((root / "bundle" / "manifest.json").read_bytes(), "k3s")
        yield {"host": host, "key": key, "first": first, "second": second, "ref": ref,
               "manifest": manifest, "address": address}  # fmt: skip
    finally:
        host.remove()


def _kubectl(host: Host, *args: str) -> list[dict[str, Any]]:
    done = host.run("k3s", "kubectl", "get", *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return items


def test_k3s_runs_from_the_bundles_files(k3s: dict[str, Any]) -> None:
    host = k3s["host"]
    assert host.run("systemctl", "is-active", "k3s").stdout.strip() == "active"
    # The unit is the install script's (INSTALL_K3S_EXEC=server), the binary the bundle's.
    assert "ExecStart=/usr/local/bin/k3s server" in host.run(
        "cat", "/etc/systemd/system/k3s.service").stdout  # fmt: skip
    binary = host.run("sha256sum", "/usr/local/bin/k3s").stdout.split()[0]
    assert binary == hashlib.sha256((STANDIN / FILES["k3s"]).read_bytes()).hexdigest()
    tarball = "/var/lib/rancher/k3s/agent/images/k3s-airgap-images.tar.zst"
    expected = hashlib.sha256((STANDIN / FILES["k3s-airgap-images"]).read_bytes()).hexdigest()
    assert host.run("sha256sum", tarball).stdout.split()[0] == expected
    (node,) = _kubectl(host, "nodes")
    assert node["metadata"]["name"] == "localhost"  # config.yaml's node-name: the inventory's
    assert {"type": "Ready", "status": "True"} in node["status"]["conditions"]


def test_registries_yaml_mirrors_to_the_local_registry_with_no_fallback(
    k3s: dict[str, Any],
) -> None:
    host = k3s["host"]
    registries = yaml.safe_load(host.run("cat", "/etc/rancher/k3s/registries.yaml").stdout)
    endpoints = {name: m["endpoint"] for name, m in registries["mirrors"].items()}
    assert endpoints == {k3s["address"]: [f"https://{REGISTRY}"], "*": [f"https://{REGISTRY}"]}
    auth = registries["configs"][REGISTRY]["auth"]
    assert auth["username"] and len(auth["password"]) >= 40
    assert registries["configs"][REGISTRY]["tls"] == {"ca_file": "/etc/appliance/pki/ca.crt"}
    config = yaml.safe_load(host.run("cat", "/etc/rancher/k3s/config.yaml").stdout)
    assert config["disable-default-registry-endpoint"] is True
    assert config["private-registry"] == "/etc/rancher/k3s/registries.yaml"
    listing = host.run("stat", "-c", "%U %a", "/etc/rancher/k3s/registries.yaml", TOKEN)
    assert listing.stdout.split("\n")[:2] == ["root 600", "root 600"]


def test_the_token_is_root_only_and_never_logged(k3s: dict[str, Any]) -> None:
    host = k3s["host"]
    token = host.run("cat", TOKEN).stdout.strip()
    assert token.startswith("K10") and len(token) == 67
    assert host.run("stat", "-c", "%U %a", "/etc/appliance/k3s").stdout.split() == ["root", "700"]
    for run in (k3s["first"], k3s["second"]):
        assert token not in run.stdout + run.stderr


def test_the_model_runs_as_a_deployment_of_the_bundles_image_by_digest(
    k3s: dict[str, Any],
) -> None:
    host, ref = k3s["host"], k3s["ref"]
    held = {c.name: c.version for c in k3s["manifest"].components if c.kind == "image"}
    assert held == {ref: ref.split("@")[1]}
    (deployment,) = _kubectl(host, "deployments", "-n", "appliance")
    assert deployment["status"]["readyReplicas"] == 1
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["hostNetwork"] is True
    assert pod_spec["volumes"][0]["hostPath"]["path"] == "/var/lib/appliance/models/tiny-llama"
    (container,) = pod_spec["containers"]
    assert container["image"] == ref
    assert container["args"][-4:] == ["--host", "127.0.0.1", "--port", "8081"]
    (pod,) = _kubectl(host, "pods", "-n", "appliance")
    (status,) = pod["status"]["containerStatuses"]
    assert status["imageID"].endswith("@" + held[ref]) and status["ready"] is True
    # The model's files, laid out by digest for the Deployment's read-only mount.
    listing = host.run("sha256sum", "/var/lib/appliance/models/tiny-llama/tiny-llama.gguf")
    (model,) = k3s["manifest"].models()
    assert listing.stdout.split()[0] == model["digest"].removeprefix("sha256:")


def test_registries_yaml_resolves_the_workload_image_to_the_bundles_digest(
    k3s: dict[str, Any],
) -> None:
    """What containerd does with registries.yaml, done by hand with skopeo on the host: the
    mirror of the image's upstream host, its rewrite, the pull identity and the CA file lead to
    the local registry's copy, whose manifest is the bundle's digest. (The stand-in k3s pulls
    nothing itself.)"""
    host, ref = k3s["host"], k3s["ref"]
    registries = yaml.safe_load(host.run("cat", "/etc/rancher/k3s/registries.yaml").stdout)
    upstream, _, rest = ref.partition("/")
    path, _, digest = rest.partition("@")
    mirror = registries["mirrors"][upstream]
    ((pattern, replacement),) = mirror["rewrite"].items()
    rewritten = re.sub(pattern, replacement.replace("$1", r"\1"), path.rsplit(":", 1)[0])
    endpoint = mirror["endpoint"][0].removeprefix("https://")
    config = registries["configs"][endpoint]
    made = host.run("sh", "-c", f"mkdir -p /srv/k3s-ca && cp {config['tls']['ca_file']} "
                    "/srv/k3s-ca/ca.crt")  # fmt: skip
    assert made.returncode == 0, made.stderr
    creds = f"{config['auth']['username']}:{config['auth']['password']}"
    raw = subprocess.run(
        ["docker", "exec", host.name, "skopeo", "inspect", "--raw", "--cert-dir", "/srv/k3s-ca",
         "--creds", creds, f"docker://{endpoint}/{rewritten}@{digest}"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digest
    # An image the bundle does not hold is simply not there.
    missing = subprocess.run(
        ["docker", "exec", host.name, "skopeo", "inspect", "--raw", "--cert-dir", "/srv/k3s-ca",
         "--creds", creds, f"docker://{endpoint}/{rewritten}@sha256:{'0' * 64}"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert missing.returncode != 0


def test_a_completion_through_the_gateway_is_audited(k3s: dict[str, Any]) -> None:
    host = k3s["host"]
    done = host.run("python3", "-c", CALL, "POST", "http://127.0.0.1:8000/v1/chat/completions",
                    k3s["key"], json.dumps(chat("tiny-llama")))  # fmt: skip
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["status"] == 200, reply
    body = json.loads("".join(reply["lines"]))
    assert body["choices"][0]["message"]["content"] == "k3s stand-in answer"
    text = host.run("sh", "-c", f"cat {AUDIT_DIR}/audit*.jsonl").stdout
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(r.get("model") == "tiny-llama" and r.get("status") == 200 for r in records), records[
        -3:
    ]


def test_a_second_install_changes_nothing(k3s: dict[str, Any]) -> None:
    second = k3s["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "changed=0 failed=0" in second.stdout.splitlines()[-2], second.stdout[-3000:]
