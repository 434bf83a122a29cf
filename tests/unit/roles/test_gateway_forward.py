"""The gateway role's audit forwarding settings, rendered by Ansible itself on this machine into
the gateway's config (checked by the gateway's own loader) and the forwarder's unit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.config import load_config
from tests.fixtures.templates import render as render_templates


def render(tmp_path: Path, **settings: Any) -> tuple[Path, str]:
    extravars = {
        "gateway_config_dir": str(tmp_path / "etc"),
        "gateway_backends": [
            {"name": "tiny", "digest": "sha256:" + "1" * 64, "url": "http://127.0.0.1:8081"}
        ],
        **settings,
    }
    files = render_templates(
        tmp_path,
        "gateway",
        {"config.json.j2": "config.json", "appliance-audit-forward.service.j2": "forward.service"},
        extravars,
    )
    return tmp_path / "config.json", files["forward.service"]


def test_forwarding_is_off_by_default_and_routes_carry_the_task(tmp_path: Path) -> None:
    config, _ = render(
        tmp_path,
        gateway_backends=[
            {"name": "chat", "digest": "sha256:" + "1" * 64, "url": "http://127.0.0.1:8081"},
            {
                "name": "embed",
                "digest": "sha256:" + "2" * 64,
                "url": "http://127.0.0.1:8082",
                "task": "embedding",
            },
        ],
    )
    loaded = load_config(config)
    assert loaded.audit.forward is None
    assert [(m.name, m.task) for m in loaded.models] == [("chat", "chat"), ("embed", "embedding")]


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
