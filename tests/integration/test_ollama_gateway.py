"""The Ollama runtime behind the audited gateway, installed by the whole site.yml from a real
bundle on an air-gapped host, and `appliance verify` over it.

The Ollama binary is a STAND-IN (tests/fixtures/ollama_standin.py: the real release cannot be
fetched here), carried as the spec's `files:` entry named ollama. The model is a real Ollama
layout, pushed to a loopback registry (tests/fixtures/registry.py, ollama.py) and fetched by
the bundle build as ollama://. What this proves: the gateway's route to Ollama (its health path,
the model named as Ollama names it), the completion through the gateway with its audit record,
and verify's checks. What it cannot: that a real Ollama loads the model and answers; the
stand-in's answer is canned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fixtures.bundles import signed_bundle
from tests.fixtures.hosts import ROOT, Host, harness_image, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import operator_key
from tests.fixtures.ollama import Pushed, push_ollama_model
from tests.fixtures.opt_in import opt_in
from tests.fixtures.registry import registry
from tests.fixtures.specs import spec_text

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    # A registry, a bundle and the whole site.yml with a stand-in binary: 2-3 minutes on 2
    # cores, kept out of CI's 45 minutes; run before a change to the Ollama runtime lands.
    opt_in("APPLIANCE_TEST_OLLAMA"),
]

EGRESS_TARGET = "http://198.19.255.10/"  # lab range: leads nowhere, must be dropped
APPLIANCE = "/opt/appliance/venv/bin/appliance"


@dataclass
class Served:
    host: Host
    key: str
    ollama_name: str  # the model as Ollama names it (its manifest path)
    digest: str  # the appliance's digest of the model

    def call(self, path: str, body: object = None, key: str | None = None) -> dict:
        done = self.host.run(
            "python3",
            "-c",
            CALL,
            "POST" if body is not None else "GET",
            "http://127.0.0.1:8000" + path,
            self.key if key is None else key,
            json.dumps(body) if body is not None else "",
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _digest(pushed: Pushed, manifest_name: str) -> str:
    """The appliance's digest of the model (what the audit log records): the sha256 of the
    sha256sum-style listing of its files in Ollama's layout, sorted by path."""
    files = {f"blobs/sha256-{hexdigest}": hexdigest for hexdigest in pushed.blobs}
    files[manifest_name] = hashlib.sha256(pushed.manifest).hexdigest()
    listing = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    image = harness_image()
    if image is None:
        pytest.fail("no harness image: run tests/harness/setup.sh")
    root = tmp_path_factory.mktemp("ollama-gateway")
    archive = root / "ollama-linux-amd64.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ROOT / "tests" / "fixtures" / "ollama_standin.py", arcname="bin/ollama")
    with registry(root / "registry") as address:
        pushed = push_ollama_model(address, "library/tiny", "latest", os.urandom(64 << 10))
        spec = spec_text(
            "ollama-gateway",
            "2026.11.29",
            stack={
                "registry": "none",
                "object_store": "filesystem",
                "orchestrator": "systemd",
                "runtime": "ollama",
            },
            packages=["nftables", "python3-apt"],
            files=[
                {
                    "name": "ollama",
                    "url": f"file://{archive}",
                    "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                }
            ],
            models=[
                {
                    "name": "tiny-ollama",
                    "source": f"ollama://{address}/library/tiny:latest",
                    "digest": pushed.digest,
                }
            ],
        )
        signed_bundle(root, spec, "ollama gateway test")
    host = start_host(image, {root / "bundle": "/srv/bundle", root / "key.pub": "/srv/key.pub"})
    try:
        done = host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
        assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
        key = operator_key(done.stdout)
        digest = _digest(pushed, f"manifests/{address}/library/tiny/latest")
        yield Served(host, key, f"{address}/library/tiny:latest", digest)
    finally:
        host.remove()


def test_the_gateway_routes_to_ollama_with_its_own_health_path(served: Served) -> None:
    config = json.loads(served.host.run("cat", "/etc/appliance/gateway/config.json").stdout)
    (route,) = config["models"]
    assert route == {
        "name": "tiny-ollama",
        "digest": served.digest,
        "backend": "http://127.0.0.1:11434",
        "backend_model": served.ollama_name,
        "health_path": "/api/version",
    }
    # An operator can recompute the digest from what Ollama serves.
    listing = served.host.run(
        "sh",
        "-c",
        "cd /var/lib/appliance/ollama/models && find . -type f | sed 's,^[.]/,,' | LC_ALL=C sort"
        " | xargs sha256sum | sha256sum",
    )
    assert "sha256:" + listing.stdout.split()[0] == served.digest
    # Ollama has no /health: the stand-in, like Ollama, answers it 404.
    health = served.host.run("python3", "-c", CALL, "GET", "http://127.0.0.1:11434/health", "", "")
    assert json.loads(health.stdout)["status"] == 404
    listed = served.call("/v1/models")
    assert listed["status"] == 200
    (model,) = json.loads("".join(listed["lines"]))["data"]
    assert (model["id"], model["appliance_digest"]) == ("tiny-ollama", served.digest)


def test_a_chat_completion_through_the_gateway_is_answered_by_ollama(served: Served) -> None:
    reply = served.call("/v1/chat/completions", chat("tiny-ollama"))
    assert reply["status"] == 200, reply["lines"]
    body = json.loads("".join(reply["lines"]))
    assert body["object"] == "chat.completion"
    # Ollama answers under its own name (served.ollama_name); clients see the one /v1/models
    # lists.
    assert body["model"] == "tiny-ollama"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"length", "stop"}
    assert 0 < body["usage"]["completion_tokens"] <= 8
    audit = served.host.run("sh", "-c", "cat /var/log/appliance/audit/audit*.jsonl").stdout
    records = {r.get("request_id"): r for r in map(json.loads, audit.splitlines())}
    record = records[reply["headers"]["X-Request-Id"]]
    assert (record["status"], record["model"], record["model_digest"]) == (
        200,
        "tiny-ollama",
        served.digest,
    )
    assert record["completion_tokens"] == body["usage"]["completion_tokens"]
    # Without a key the gateway refuses, before Ollama is asked.
    refused = served.call("/v1/chat/completions", chat("tiny-ollama"), key="")
    assert refused["status"] == 401


def test_verify_passes_with_ollama_behind_the_gateway(served: Served) -> None:
    done = served.host.run(APPLIANCE, "--json", "verify", "--egress-target", EGRESS_TARGET)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert all(c["passed"] for c in checks.values())
    assert checks["runtime running"]["evidence"] == "appliance-ollama.service"
    egress = checks[f"runtime appliance-ollama.service: egress blocked: {EGRESS_TARGET}"]
    assert "uid" in egress["evidence"]
    health = checks["gateway backend healthy: tiny-ollama"]["evidence"]
    assert health == "http://127.0.0.1:11434/api/version answered HTTP 200"
    assert checks["gateway completion: tiny-ollama"]["evidence"].startswith("HTTP 200")
    assert checks["gateway audit log: the call is recorded"]["passed"]
    assert checks["gateway audit log: hash chain intact"]["passed"]


def test_verify_fails_when_ollama_is_down(served: Served) -> None:
    run = served.host.run
    assert run("systemctl", "stop", "appliance-ollama.service").returncode == 0
    try:
        done = run(APPLIANCE, "--json", "verify", "--egress-target", EGRESS_TARGET)
        assert done.returncode == 33, done.stdout[-3000:]
        failed = {p["path"] for p in json.loads(done.stdout)["error"]["problems"]}
        assert "localhost: gateway backend healthy: tiny-ollama" in failed, failed
        assert "localhost: gateway completion: tiny-ollama" in failed, failed
    finally:
        run("systemctl", "start", "appliance-ollama.service")


def test_a_rerun_changes_nothing(served: Served) -> None:
    again = served.host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
    assert again.returncode == 0, again.stdout[-3000:]
    assert re.search(r" on 1 host in \d+ s: ok=\d+ changed=0 failed=0", again.stdout), again.stdout[
        -3000:
    ]
    assert served.call("/v1/chat/completions", chat("tiny-ollama"))["status"] == 200
