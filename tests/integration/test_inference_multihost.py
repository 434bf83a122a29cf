"""Inference across hosts: a depot that runs the gateway and two GPU nodes, each serving one
model, on an internal lab network. install.sh runs on the depot and reaches the nodes over SSH;
the nodes get their runtime venv and their model only from the depot's repository server.

What this proves: the gateway on the depot routes each model to the node that serves it, a
node's runtime port answers the gateway host and nobody else (no way around the gateway's keys
and audit log), and `appliance verify` with the inventory passes on every host. The models are
random: the tests assert model ids, finish reasons and token counts, never the words.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.bundles import signed_bundle
from tests.fixtures.hosts import Host, lab_inventory
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import mounts, operator_key
from tests.fixtures.multihost import INVENTORY, multihost_lab, probe
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "198.18.47.0/24"
DEPOT = "198.18.47.10"
NODES = {"gpu-1": "198.18.47.11", "gpu-2": "198.18.47.12"}
SERVES = {"gpu-1": "tiny-llama", "gpu-2": "tiny-llama-b"}
EGRESS_TARGET = "http://198.19.255.10/"  # lab range, off the lab network: leads nowhere
# Each node serves one model on its first runtime port; gpu-2 moves its port base (the firewall
# must follow it).
PORTS = {"gpu-1": 8081, "gpu-2": 8091}

# The nodes need nginx-light only on the depot (its repository server); libgomp1 on the nodes.
SPEC = spec_text(
    "inference-multihost",
    "2026.11.28",
    stack=SYSTEMD_LLAMACPP,
    packages=["nftables", "python3-apt", "libgomp1", "nginx-light"],
    models=[
        {"name": "tiny-llama", "source": "models/tiny-llama.gguf", "format": "gguf"},
        {"name": "tiny-llama-b", "source": "models/tiny-llama-b.gguf", "format": "gguf"},
    ],
    wheels={"llamacpp": ["xllamacpp==2026.10.11549"]},
)


def inventory() -> str:
    return lab_inventory(
        DEPOT,
        NODES,
        group_vars={"runtime_llamacpp_ctx_size": "512", "runtime_llamacpp_threads": "1"},
        host_vars={
            name: {
                "runtime_llamacpp_models": f"[{SERVES[name]}]",
                "runtime_llamacpp_port_base": str(PORTS[name]),
            }
            for name in NODES
        },
    )


@dataclass
class Lab:
    depot: Host
    nodes: dict[str, Host]  # inventory name -> host
    key: str
    first: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]

    def call(self, path: str, body: Any = None) -> dict[str, Any]:
        done = self.depot.run(
            "python3",
            "-c",
            CALL,
            "POST" if body is not None else "GET",
            "http://127.0.0.1:8000" + path,
            self.key,
            json.dumps(body) if body is not None else "",
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("inference-multihost")
    for name in ("tiny-llama", "tiny-llama-b"):
        subprocess.run(
            [sys.executable, ROOT / "examples" / "tiny_model.py", "gguf",
             root / "models" / f"{name}.gguf"],
            check=True,
            capture_output=True,
        )  # fmt: skip
    signed_bundle(root, SPEC, "inference multihost test")
    (root / "inventories").mkdir()
    (root / "inventories" / "lab.yml").write_text(inventory())
    (root / "other.pub").write_text("")
    with multihost_lab(SUBNET, DEPOT, NODES, mounts(root)) as hosts:
        first = hosts.install()
        assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
        key = operator_key(first.stdout)
        again = hosts.install()
        yield Lab(hosts.depot, hosts.nodes, key, first, again)


def test_install_reaches_three_hosts_and_a_rerun_changes_nothing(lab: Lab) -> None:
    assert "installed inference-multihost 2026.11.28 on 3 hosts in " in lab.first.stdout
    assert lab.again.returncode == 0, lab.again.stdout[-4000:]
    summary = r"installed inference-multihost 2026.11.28 on 3 hosts in \d+ s: ok=\d+ changed=0 "
    assert re.search(summary + "failed=0", lab.again.stdout), lab.again.stdout[-3000:]
    assert "shown this once" not in lab.again.stdout


def test_nodes_got_their_model_and_venv_from_the_depot(lab: Lab) -> None:
    log = lab.depot.run("cat", "/var/log/nginx/appliance-repo.access.log").stdout.splitlines()
    for name, node in lab.nodes.items():
        model = SERVES[name]
        listing = node.run("ls", "/var/lib/appliance/models").stdout.split()
        assert listing == [model], listing  # only the model it serves
        assert node.run("test", "-e", "/opt/appliance/releases").returncode == 1  # no bundle
        venv = node.run("/opt/appliance/runtimes/llamacpp/bin/python", "-c", "import xllamacpp")
        assert venv.returncode == 0, venv.stderr
        # The node fetched its model and the runtime's wheel over HTTP from the depot.
        fetched = {
            line.split('"')[1].split()[1]
            for line in log
            if line.startswith(NODES[name] + " ") and '" 200 ' in line
        }
        gguf = f"/var/lib/appliance/models/{model}/{model}.gguf"
        wheel = "/var/lib/appliance/wheelhouse/llamacpp/*/xllamacpp-*.whl"
        for path in (gguf, wheel):
            digest = node.run("sh", "-c", f"sha256sum {path}").stdout.split()
            assert digest, path
            assert f"/blobs/sha256/{digest[0]}" in fetched, (path, sorted(fetched))
        # Its own model's settings and the digests its unit checks before each start.
        assert node.run("ls", "/etc/appliance/llamacpp").stdout.split() == [
            f"{model}.env",
            f"{model}.sha256",
        ]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-llama-b"])
def test_the_gateway_routes_each_model_to_its_node(lab: Lab, model: str) -> None:
    config = json.loads(lab.depot.run("cat", "/etc/appliance/gateway/config.json").stdout)
    routes = {r["name"]: r["backend"] for r in config["models"]}
    node = next(n for n, m in SERVES.items() if m == model)
    assert routes[model] == f"http://{NODES[node]}:{PORTS[node]}"

    reply = lab.call("/v1/chat/completions", chat(model))
    assert reply["status"] == 200, reply["lines"]
    body = json.loads("".join(reply["lines"]))
    assert body["model"] == model
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"length", "stop"}
    assert 0 < body["usage"]["completion_tokens"] <= 8
    # The node answered it: its server is on its own address, and it alone serves the model.
    served = lab.nodes[node].run("systemctl", "is-active", f"appliance-llamacpp@{model}.service")
    assert served.stdout.strip() == "active"
    listed = lab.call("/v1/models")
    assert sorted(m["id"] for m in json.loads("".join(listed["lines"]))["data"]) == sorted(
        SERVES.values()
    )


def test_a_runtime_answers_the_gateway_host_and_nobody_else(lab: Lab) -> None:
    one, two = lab.nodes["gpu-1"], lab.nodes["gpu-2"]
    for node in NODES:
        assert probe(lab.depot, NODES[node], PORTS[node]) == "open", node
    # The other node is inside the boundary too, but it is not the gateway: no way around it.
    for source, target in ((two, "gpu-1"), (one, "gpu-2")):
        seen = probe(source, NODES[target], PORTS[target])
        assert seen.split()[0] in {"refused", "dropped"}, seen
    # The same node can reach the other's SSH (the internal network works): only the runtime
    # port is closed to it.
    assert probe(two, NODES["gpu-1"], 22) == "open"


def test_verify_passes_on_every_host(lab: Lab) -> None:
    done = lab.depot.run(
        "/opt/appliance/venv/bin/appliance",
        "--json",
        "verify",
        "--egress-target",
        EGRESS_TARGET,
        "--inventory",
        INVENTORY,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    checks = {(c["host"], c["name"]): c for c in json.loads(done.stdout)["checks"]}
    assert all(c["passed"] for c in checks.values())
    for node, model in SERVES.items():
        unit = f"appliance-llamacpp@{model}.service"
        assert checks[(node, "runtime running")]["evidence"] == unit
        probe = checks[(node, f"runtime {unit}: egress blocked: {EGRESS_TARGET}")]
        assert "uid" in probe["evidence"]
        assert (node, f"egress blocked: {EGRESS_TARGET}") in checks
    for node, model in SERVES.items():
        backend = checks[("depot-1", f"gateway backend healthy: {model}")]
        health = f"http://{NODES[node]}:{PORTS[node]}/health answered HTTP 200"
        assert backend["evidence"] == health, backend
    for name in (
        "gateway completion: tiny-llama",
        "gateway audit log: the call is recorded",
        "gateway audit log: hash chain intact",
    ):
        assert ("depot-1", name) in checks, sorted(checks)
    # The depot serves no model: it runs no runtime.
    assert not any(h == "depot-1" and n.startswith("runtime ") for h, n in checks)
