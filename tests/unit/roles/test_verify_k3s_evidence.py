"""The verify role's k3s evidence, gathered by Ansible itself on this machine against a stand-in
k3s (tests/fixtures/k3s_cluster.py: read-only kubectl calls only) and judged by appliance
verify's code: the evidence file's shape is the one the judge reads, the calls are ``get`` only,
and a stack that is not on k3s gathers nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.install.verify_k3s import K3sExpect, judge_k3s
from appliance.roles import ROLES_DIR
from tests.fixtures import k3s_cluster as cluster
from tests.fixtures.hosts import ROOT

PLAY = """\
- name: Gather verify's evidence on this machine
  hosts: all
  gather_facts: false
  roles:
    - role: verify
"""
# Two hosts on this machine, one run: the k3s server of a stack on k3s, and a host of a stack
# that is not on k3s (the installer passes appliance_verify_k3s per stack; here per host).
INVENTORY = """\
server ansible_connection=local ansible_python_interpreter={python} appliance_verify_k3s=true
elsewhere ansible_connection=local ansible_python_interpreter={python} appliance_verify_k3s=false
"""
# What an upgrade may skip anyway (upgrade_scope.verify_skips): the rest of the role reads this
# machine harmlessly (no targets to probe, no firewall, no runtimes, no gateway).
SKIP = "verify_models,verify_store,verify_registry,verify_engines,verify_gpu"


@pytest.fixture(scope="module")
def gathered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[str], Path]:
    """Each host's evidence file, the stand-in's calls, and its directory."""
    tmp_path = tmp_path_factory.mktemp("verify-k3s")
    binary = cluster.kubectl_standin(tmp_path / "k3s", cluster.evidence())
    reports = tmp_path / "reports"
    reports.mkdir()
    extravars = {
        "appliance_report_dir": str(reports),
        "verify_k3s_binary": str(binary),
        "verify_k3s_kubeconfig": str(binary.parent / "k3s.yaml"),
        "verify_k3s_manifests": str(binary.parent / "appliance.yaml"),
        "verify_gateway_config": str(tmp_path / "no-gateway" / "config.json"),
    }
    (tmp_path / "extravars.json").write_text(json.dumps(extravars))
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "hosts").write_text(INVENTORY.format(python=sys.executable))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts"),
        "--skip-tags", SKIP, "-e", f"@{tmp_path / 'extravars.json'}", str(tmp_path / "play.yml"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    calls = binary.parent / "calls.log"
    log = calls.read_text().splitlines() if calls.is_file() else []
    evidence = {p.stem: json.loads(p.read_text()) for p in reports.glob("*.json")}
    return evidence, log, binary.parent


def test_the_k3s_server_reads_the_cluster_read_only_and_the_judge_reads_that(
    gathered: tuple[dict[str, Any], list[str], Path],
) -> None:
    evidence, calls, where = gathered
    assert calls == [
        f"kubectl --kubeconfig {where / 'k3s.yaml'} get {kind} --all-namespaces --output json"
        for kind in ("nodes", "pods", "deployments", "networkpolicies")
    ]
    found = evidence["server"]["k3s"]
    assert {kind: found[kind]["rc"] for kind in ("nodes", "pods")} == {"nodes": 0, "pods": 0}
    assert found["planned"] == cluster.evidence()["planned"]
    expect = K3sExpect.of(cluster.BUNDLE_IMAGES, cluster.AIRGAP, gpus={"gpu-1": 1})
    checks = judge_k3s("server", found, expect)
    assert [c for c in checks if not c.passed] == []
    assert len(checks) == 26  # 2 nodes, 1 GPU node, 5 pods x 4, 1 model x 2, 1 policy


def test_a_stack_not_on_k3s_reads_no_cluster(
    gathered: tuple[dict[str, Any], list[str], Path],
) -> None:
    evidence, _calls, _where = gathered
    assert evidence["elsewhere"]["k3s"] is None
