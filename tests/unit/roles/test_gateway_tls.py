"""The gateway role's HTTPS choice, run by Ansible itself on this machine (nothing installed):
the config it writes for each gateway_tls, as the gateway loads it, and the refusals of its
TLS step before anything changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.config import GatewayConfig
from appliance.roles import ROLES_DIR
from tests.fixtures.hosts import ROOT
from tests.fixtures.templates import render as render_templates

TLS_STEP = """\
- name: Run the gateway role's TLS step
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Set up HTTPS
      ansible.builtin.include_role:
        name: gateway
        tasks_from: tls
"""
BACKENDS = [{"name": "m", "digest": "sha256:" + "0" * 64, "url": "http://127.0.0.1:8081"}]


def play(tmp_path: Path, text: str, extravars: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(text)
    (tmp_path / "extravars.json").write_text(json.dumps(extravars))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--check",
         "-e", f"@{tmp_path / 'extravars.json'}", str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def rendered(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    extravars = {"gateway_backends": BACKENDS, "gateway_listen_host": "127.0.0.1", **settings}
    files = render_templates(tmp_path, "gateway", {"config.json.j2": "config.json"}, extravars)
    document: dict[str, Any] = json.loads(files["config.json"])
    GatewayConfig.model_validate(document)  # the gateway takes what the role writes
    return document["listen"]  # type: ignore[no-any-return]


def test_the_config_says_https_by_default_and_plain_http_only_when_off(tmp_path: Path) -> None:
    tls_dir = "/etc/appliance/gateway/tls"
    assert rendered(tmp_path) == {
        "host": "127.0.0.1",
        "port": 8000,
        "tls": {"cert": f"{tls_dir}/public.crt", "key": f"{tls_dir}/private.key",
                "min_version": "1.2"},
    }  # fmt: skip
    required = rendered(tmp_path, gateway_tls="files", gateway_tls_client_ca="/site/users.pem",
                        gateway_tls_min_version="1.3")  # fmt: skip
    assert required["tls"]["client_ca"] == f"{tls_dir}/client-ca.crt"
    assert required["tls"]["min_version"] == "1.3"
    assert rendered(tmp_path, gateway_tls="off") == {
        "host": "127.0.0.1",
        "port": 8000,
        "plain_http": True,
    }


def topology(depot: str) -> dict[str, Any]:
    host = {"name": "localhost", "address": "127.0.0.1", "depot": depot == "localhost"}
    return {"depot": depot, "hosts": {"localhost": host}}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"gateway_tls": "site_ca", "appliance_topology": topology("depot-1")},
            "gateway_tls site_ca: the site CA's key stays on the depot (depot-1), and this "
            "gateway runs on localhost",
        ),
        (
            {"gateway_tls": "files", "gateway_tls_cert": "/site/gw.crt",
             "appliance_topology": topology("localhost")},
            "gateway_tls files needs gateway_tls_cert, gateway_tls_key and gateway_tls_ca",
        ),
        (
            {"gateway_tls": "https", "appliance_topology": topology("localhost")},
            "gateway_tls takes site_ca (the appliance's own CA), files (the site's PKI) or off",
        ),
    ],
)  # fmt: skip
def test_the_tls_step_refuses_before_anything_changes(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    done = play(tmp_path, TLS_STEP, {"gateway_config_dir": str(tmp_path / "etc"), **settings})
    assert done.returncode != 0
    assert message in " ".join(done.stdout.split()), done.stdout[-3000:]
    assert not (tmp_path / "etc").exists()
