"""The registry role's rendered files, with Ansible itself on this machine: docker-registry's
configuration (loopback, its own htpasswd, data outside the releases), its hardened unit, the
nginx TLS front that authorizes (the pull identity may only GET and HEAD) and the client
configuration. nginx is not on this machine: the front runs for real in
tests/integration/test_registry.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from appliance.roles import role_defaults
from tests.fixtures.roles import render_templates

TEMPLATES = [
    "config.yml.j2",
    "appliance-registry.service.j2",
    "nginx-appliance-registry.conf.j2",
    "registry.json.j2",
]


def plan(address: str) -> dict[str, Any]:
    return {
        "appliance_topology": {"registry": {"address": address, "port": 5000}},
        "appliance_site_ca_cert": "/etc/appliance/pki/ca.crt",
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return {
        where: render_templates(tmp_path_factory.mktemp(where), "registry", TEMPLATES, plan(addr))
        for where, addr in (("single", "127.0.0.1"), ("lab", "198.18.10.2"))
    }


def test_the_registry_listens_on_loopback_with_its_own_password_file(
    rendered: dict[str, dict[str, str]],
) -> None:
    config = yaml.safe_load(rendered["lab"]["config.yml.j2"])
    assert config["http"]["addr"] == "127.0.0.1:5001"
    assert config["auth"] == {
        "htpasswd": {
            "realm": "appliance-registry",
            "path": "/etc/appliance/registry/backend.htpasswd",
        }
    }
    assert config["storage"]["filesystem"]["rootdirectory"] == "/var/lib/appliance/registry"
    assert config["storage"]["delete"] == {"enabled": False}


def test_the_unit_runs_hardened_and_writes_only_the_storage(
    rendered: dict[str, dict[str, str]],
) -> None:
    unit = [
        line
        for line in rendered["single"]["appliance-registry.service.j2"].splitlines()
        if line and not line.startswith(("#", "["))
    ]
    for line in [
        "User=docker-registry",
        "ExecStart=/usr/bin/docker-registry serve /etc/appliance/registry/config.yml",
        "ReadWritePaths=/var/lib/appliance/registry",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ]:
        assert line in unit, line


def _server_lines(front: str) -> list[str]:
    return [line.strip() for line in front.splitlines() if line.strip() and "#" not in line]


def test_the_front_listens_with_tls_where_the_plan_says(
    rendered: dict[str, dict[str, str]],
) -> None:
    single = _server_lines(rendered["single"]["nginx-appliance-registry.conf.j2"])
    lab = _server_lines(rendered["lab"]["nginx-appliance-registry.conf.j2"])
    assert [line for line in single if line.startswith("listen")] == ["listen 127.0.0.1:5000 ssl;"]
    assert [line for line in lab if line.startswith("listen")] == [
        "listen 127.0.0.1:5000 ssl;",
        "listen 198.18.10.2:5000 ssl;",
    ]
    for line in [
        "ssl_certificate /etc/appliance/registry/tls/public.crt;",
        "ssl_certificate_key /etc/appliance/registry/tls/private.key;",
        "auth_basic_user_file /etc/appliance/registry/htpasswd;",
        "include /etc/appliance/registry/backend-auth.conf;",
        "proxy_pass http://127.0.0.1:5001;",
        "client_max_body_size 0;",
    ]:
        assert line in lab, line


def _refused(front: str, user: str, method: str) -> bool:
    """nginx's map, evaluated as nginx does: the first regex that matches, else the default."""
    body = front.split("$appliance_registry_refused {", 1)[1].split("}", 1)[0]
    rules = [line.split() for line in body.splitlines() if line.strip()]
    default = next(value.rstrip(";") for key, value in rules if key == "default")
    for key, value in rules:
        if key.startswith('"~') and re.search(key[2:-1], f"{user}:{method}"):
            return value.rstrip(";") == "1"
    return default == "1"


@pytest.mark.parametrize(
    ("user", "method", "refused"),
    [
        ("appliance-pull", "GET", False),
        ("appliance-pull", "HEAD", False),
        ("appliance-pull", "PUT", True),
        ("appliance-pull", "POST", True),
        ("appliance-pull", "PATCH", True),
        ("appliance-pull", "DELETE", True),
        ("appliance-push", "PUT", False),
        ("appliance-push", "POST", False),
        ("appliance-push", "GET", False),
        # No credentials yet: auth_basic answers 401 with the challenge clients wait for.
        ("", "GET", False),
        ("", "PUT", False),
        ("someone", "GET", True),
        ("appliance-pull-x", "GET", True),
    ],
)
def test_the_front_lets_the_pull_identity_only_read(
    rendered: dict[str, dict[str, str]], user: str, method: str, refused: bool
) -> None:
    assert _refused(rendered["lab"]["nginx-appliance-registry.conf.j2"], user, method) is refused


def test_the_client_configuration_names_files_and_holds_no_secret(
    rendered: dict[str, dict[str, str]],
) -> None:
    assert json.loads(rendered["lab"]["registry.json.j2"]) == {
        "kind": "distribution",
        "address": "198.18.10.2:5000",
        "ca_file": "/etc/appliance/pki/ca.crt",
        "cert_dir": "/etc/appliance/registry/client-certs",
        "push_auth": "/etc/appliance/registry/push-auth.json",
        "pull_auth": "/etc/appliance/registry/pull-auth.json",
    }


def test_the_storage_is_data_outside_every_release() -> None:
    assert not role_defaults("registry")["registry_data_dir"].startswith("/opt/appliance")
