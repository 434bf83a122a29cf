"""The object_store and site_ca roles' rendered configuration, with Ansible itself on this
machine: the server's unit and environment, the client configuration, and a real site CA with a
certificate it issued. The MinIO binary is not reachable here (tests/fixtures/minio_standin.py),
so the server's own reading of this configuration waits for the real binary."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance.roles import ROLES_DIR
from appliance.store import S3Store, load_config, open_store
from tests.fixtures.roles import play_locally

PLAN = {
    "kind": "minio",
    "host": "depot-1",
    "listen_address": "198.18.10.2",
    "port": 9000,
    "url": "https://198.18.10.2:9000",
}


def render(tmp_path: Path, templates: list[str], extravars: dict[str, Any]) -> dict[str, str]:
    role = ROLES_DIR / "object_store"
    tasks: list[dict[str, Any]] = [
        {"ansible.builtin.include_vars": {"file": str(role / "defaults" / "main.yml")}},
        {"ansible.builtin.include_vars": {"file": str(role / "vars" / "main.yml")}},
    ]
    tasks += [
        {"ansible.builtin.template": {"src": str(role / "templates" / name),
                                      "dest": str(tmp_path / name.removesuffix(".j2"))}}
        for name in templates
    ]  # fmt: skip
    play_locally(tmp_path, tasks, extravars)
    return {name: (tmp_path / name.removesuffix(".j2")).read_text() for name in templates}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return render(
        tmp_path_factory.mktemp("object-store"),
        ["appliance-object-store.service.j2", "object-store.env.j2", "store.json.j2"],
        {"__object_store_plan": PLAN, "appliance_site_ca_cert": "/etc/appliance/pki/ca.crt"},
    )


def directives(unit: str) -> list[str]:
    return [line for line in unit.splitlines() if line and not line.startswith(("#", "["))]


def test_the_unit_runs_the_server_hardened_as_its_own_user(rendered: dict[str, str]) -> None:
    unit = directives(rendered["appliance-object-store.service.j2"])
    for line in [
        "User=appliance-minio",
        "ExecStart=/opt/appliance/object-store/bin/minio server $MINIO_OPTS $MINIO_VOLUMES",
        "EnvironmentFile=/etc/appliance/object-store/object-store.env",
        "EnvironmentFile=/etc/appliance/object-store/credentials.env",
        "ReadWritePaths=/var/lib/appliance/object-store",
        "ReadOnlyPaths=/etc/appliance/object-store/certs",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "PrivateDevices=true",
        "MemoryDenyWriteExecute=true",
        "SystemCallFilter=@system-service",
    ]:
        assert line in unit, line


def test_the_data_lives_outside_every_release(rendered: dict[str, str]) -> None:
    data = next(
        line.split("=", 1)[1]
        for line in directives(rendered["appliance-object-store.service.j2"])
        if line.startswith("ReadWritePaths=")
    )
    assert not data.startswith("/opt/appliance/releases")
    assert f'MINIO_VOLUMES="{data}"' in rendered["object-store.env.j2"].splitlines()


def test_the_environment_names_address_and_certificates_but_no_secret(
    rendered: dict[str, str],
) -> None:
    env = [line for line in rendered["object-store.env.j2"].splitlines() if "=" in line]
    assert env[-4:] == [
        'MINIO_VOLUMES="/var/lib/appliance/object-store"',
        'MINIO_OPTS="--address 198.18.10.2:9000 --certs-dir /etc/appliance/object-store/certs"',
        "MINIO_SITE_REGION=us-east-1",
        "MINIO_BROWSER=off",
    ]
    assert not any(line.startswith(("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")) for line in env)


def test_the_client_configuration_names_the_root_only_credentials(
    rendered: dict[str, str], tmp_path: Path
) -> None:
    config = json.loads(rendered["store.json.j2"])
    assert config == {
        "kind": "s3",
        "endpoint": "https://198.18.10.2:9000",
        "region": "us-east-1",
        "credentials_file": "/etc/appliance/object-store/credentials.env",
        "access_key_var": "MINIO_ROOT_USER",
        "secret_key_var": "MINIO_ROOT_PASSWORD",
        "ca_file": "/etc/appliance/pki/ca.crt",
        "buckets": {"models": "appliance-models"},
    }
    # What appliance.store makes of it, with a credentials file as the role writes it.
    secrets = tmp_path / "credentials.env"
    secrets.write_text("MINIO_ROOT_USER=appliance-abc\nMINIO_ROOT_PASSWORD=s3cr3t\n")
    config["credentials_file"] = str(secrets)
    config["ca_file"] = None
    (tmp_path / "store.json").write_text(json.dumps(config))
    store = open_store(load_config(str(tmp_path / "store.json")))
    assert isinstance(store, S3Store)
    assert (store.endpoint, store.bucket("models")) == (
        "https://198.18.10.2:9000",
        "appliance-models",
    )


@pytest.mark.slow
def test_the_site_ca_issues_the_store_a_certificate_for_its_addresses(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    issue = {
        "site_ca_dir": str(pki),
        "site_ca_issue_dir": str(tmp_path / "certs"),
        "site_ca_issue_common_name": "depot-1 object store",
        "site_ca_issue_names": ["IP:198.18.10.2", "IP:127.0.0.1", "DNS:localhost"],
        "site_ca_issue_owner": "root",
        "appliance_name": "acme",
    }
    tasks = [
        {"ansible.builtin.include_role": {"name": "site_ca"}},
        {"ansible.builtin.include_role": {"name": "site_ca", "tasks_from": "issue"}},
    ]
    first = play_locally(tmp_path, tasks, issue)
    assert "changed=0" not in first
    again = play_locally(tmp_path, tasks, issue)
    assert "changed=0" in again, again  # idempotent: the CA and the certificate stay
    key = pki / "ca" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "certs" / "private.key").stat().st_mode) == 0o600
    cert = tmp_path / "certs" / "public.crt"
    checked = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki / "ca.crt"), str(cert)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.stdout.strip() == f"{cert}: OK", checked.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage", "-in", str(cert)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "IP Address:198.18.10.2, IP Address:127.0.0.1, DNS:localhost" in text
    assert "TLS Web Server Authentication" in text
    # New names: the certificate is issued again, from the same CA.
    issue["site_ca_issue_names"] = ["IP:198.18.10.3"]
    play_locally(tmp_path, tasks, issue)
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "IP Address:198.18.10.3" in text and "198.18.10.2" not in text
