"""The gateway role's audit forwarding settings, rendered by Ansible itself on this machine into
the gateway's config (checked by the gateway's own loader) and the forwarder's unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.config import load_config
from appliance.roles import ROLES_DIR
from tests.fixtures.hosts import ROOT

ROLE = ROLES_DIR / "gateway"


def render(tmp_path: Path, **settings: Any) -> tuple[Path, str]:
    play = [
        {
            "name": "Render the gateway's config and the forwarder's unit",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml")],
            "tasks": [
                {
                    "name": f"Render {name}",
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates" / source),
                        "dest": str(tmp_path / name),
                        "mode": "0644",
                    },
                }
                for source, name in (
                    ("config.json.j2", "config.json"),
                    ("appliance-audit-forward.service.j2", "forward.service"),
                )
            ],
        }
    ]
    extravars = {
        "gateway_config_dir": str(tmp_path / "etc"),
        "gateway_backends": [
            {"name": "tiny", "digest": "sha256:" + "1" * 64, "url": "http://127.0.0.1:8081"}
        ],
        **settings,
    }
    (tmp_path / "play.yml").write_text(json.dumps(play))
    (tmp_path / "extravars.json").write_text(json.dumps(extravars))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"),
         "-e", f"@{tmp_path / 'extravars.json'}", str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return tmp_path / "config.json", (tmp_path / "forward.service").read_text()


def test_forwarding_is_off_by_default(tmp_path: Path) -> None:
    config, _ = render(tmp_path)
    assert load_config(config).audit.forward is None


@pytest.mark.parametrize("client_cert", [True, False])
def test_syslog_and_file_forwarding(tmp_path: Path, client_cert: bool) -> None:
    cert = (
        {"gateway_audit_forward_syslog_cert": "c.pem", "gateway_audit_forward_syslog_key": "c.key"}
        if client_cert
        else {}
    )
    config, unit = render(
        tmp_path,
        gateway_audit_forward_syslog_host="logs.site.example",
        gateway_audit_forward_syslog_ca="ca.pem",
        gateway_audit_forward_file="/var/log/siem/appliance-audit.log",
        **cert,
    )
    forward = load_config(config).audit.forward
    assert forward is not None and forward.syslog is not None
    etc = tmp_path / "etc"
    assert (forward.syslog.host, forward.syslog.port) == ("logs.site.example", 6514)
    assert forward.syslog.ca_file == etc / "forward-ca.pem"
    assert forward.syslog.cert_file == (etc / "forward-client.pem" if client_cert else None)
    assert forward.syslog.key_file == (etc / "forward-client.key" if client_cert else None)
    assert forward.file == Path("/var/log/siem/appliance-audit.log")
    assert forward.hostname == "localhost"  # the inventory name
    assert f"--config {etc}/config.json" in unit
    assert "ReadWritePaths=/var/log/appliance/audit /var/log/siem\n" in unit
