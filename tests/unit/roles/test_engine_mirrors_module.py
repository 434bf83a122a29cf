"""The container_engines role's module: containerd's config.toml edited in place (other keys
kept, as NVIDIA's toolkit writes them), and the audit that finds every way a pull could leave
the local registry."""

from __future__ import annotations

import importlib.util
import json
import socket
import ssl
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from appliance.mirrors import namespace
from appliance.roles import ROLES_DIR
from tests.fixtures.secure_registry import issue, make_ca

MODULE = ROLES_DIR / "container_engines" / "library" / "appliance_engine_mirrors.py"
REGISTRY = "198.18.10.10:5000"
CA = "/etc/appliance/pki/registry-ca.crt"
# Debian's config.toml, with a runtime as `nvidia-ctk runtime configure` adds one.
DEBIAN_CONFIG = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
      privileged_without_host_devices = false
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""


@pytest.fixture(scope="module")
def mirrors() -> ModuleType:
    spec = importlib.util.spec_from_file_location("appliance_engine_mirrors", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "config": str(tmp_path / "config.toml"),
        "hosts_dir": str(tmp_path / "certs.d"),
        "docker_config": str(tmp_path / "daemon.json"),
        "registry": REGISTRY,
        "upstreams": ["docker.io", "ghcr.io"],
        "ca_file": CA,
        "probe_tls": False,  # test_a_wrong_ca_is_named probes a real TLS server
        "username": "puller",
        "password": "secret",
        **extra,
    }


def rule(upstream: str, *, server: bool = True, host: bool = True) -> str:
    """What the role's template writes (templates/hosts.toml.j2), parts removable."""
    prefix = "_unmirrored" if upstream == "_default" else namespace(upstream)
    mirror = f"https://{REGISTRY}/v2/{prefix}"
    entry = f'override_path = true\nca = "{CA}"\ncapabilities = ["pull", "resolve"]\n'
    return (
        (f'server = "{mirror}"\n' if server else "")
        + entry
        + (f'[host."{mirror}"]\n' + entry if host else "")
    )


DEFAULT = {"_default": f"# every other registry\n{rule('_default')}"}


def write_rules(tmp_path: Path, rules: dict[str, str]) -> None:
    for upstream, text in rules.items():
        (tmp_path / "certs.d" / upstream).mkdir(parents=True)
        (tmp_path / "certs.d" / upstream / "hosts.toml").write_text(text)


def test_the_registry_keys_are_set_and_every_other_key_kept(
    mirrors: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "config.toml").write_text(DEBIAN_CONFIG)
    assert mirrors.configure(params(tmp_path), check_mode=False)["changed"] is True
    written = tomllib.loads((tmp_path / "config.toml").read_text())
    cri = written["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"] == {
        "config_path": str(tmp_path / "certs.d"),
        "configs": {REGISTRY: {"auth": {"username": "puller", "password": "secret"}}},
    }
    before = tomllib.loads(DEBIAN_CONFIG)
    del cri["registry"]
    assert written == before
    assert (tmp_path / "config.toml").stat().st_mode & 0o777 == 0o600
    assert mirrors.configure(params(tmp_path), check_mode=False)["changed"] is False


def test_check_mode_reports_the_change_and_writes_nothing(
    mirrors: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "config.toml").write_text(DEBIAN_CONFIG)
    assert mirrors.configure(params(tmp_path), check_mode=True)["changed"] is True
    assert (tmp_path / "config.toml").read_text() == DEBIAN_CONFIG


def test_the_deprecated_mirrors_table_goes_since_cri_refuses_it_beside_config_path(
    mirrors: ModuleType, tmp_path: Path
) -> None:
    old = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
    (tmp_path / "config.toml").write_text(old + 'endpoint = ["https://registry-1.docker.io"]\n')
    mirrors.configure(params(tmp_path), check_mode=False)
    written = tomllib.loads((tmp_path / "config.toml").read_text())
    assert "mirrors" not in written["plugins"]["io.containerd.grpc.v1.cri"]["registry"]


def test_a_config_of_another_version_is_refused(mirrors: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("version = 3\n")
    with pytest.raises(ValueError, match="containerd config version 3 is not 2"):
        mirrors.configure(params(tmp_path), check_mode=False)


@pytest.mark.parametrize(
    "value",
    ['a "quoted" \\ value\twith tab', 7, 1.5, True, ["x", "y"], {"nested key": {"k": "v"}}],
)
def test_what_is_written_reads_back_the_same(mirrors: ModuleType, value: object) -> None:
    data = {"version": 2, "plugins": {"a.b": {"value": value, "table": {"x": 1}}}}
    assert tomllib.loads(mirrors.dump_toml(data)) == data


def test_the_role_s_rules_pass_the_audit(mirrors: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(DEBIAN_CONFIG)
    mirrors.configure(params(tmp_path), check_mode=False)
    write_rules(tmp_path, {**DEFAULT, "docker.io": rule("docker.io"), "ghcr.io": rule("ghcr.io")})
    result = mirrors.audit(params(tmp_path))
    assert result["problems"] == []
    assert result["containerd"]["upstreams"]["ghcr.io"] == {
        "server": f"https://{REGISTRY}/v2/ghcr.io",
        "hosts": [f"https://{REGISTRY}/v2/ghcr.io"],
    }
    assert result["docker"] is None
    assert result["containerd"]["upstreams"]["_default"]["server"] == (
        f"https://{REGISTRY}/v2/_unmirrored"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            rule("ghcr.io", server=False),
            "containerd: ghcr.io: hosts.toml has no server: pulls fall back to ghcr.io",
        ),
        (
            rule("ghcr.io", host=False),
            "containerd: ghcr.io: hosts.toml has no [host] table: containerd 1.6 cannot read it "
            "and pulls from ghcr.io",
        ),
        (
            rule("ghcr.io").replace(
                f'server = "https://{REGISTRY}/v2/ghcr.io"', 'server = "https://ghcr.io"'
            ),
            f"containerd: ghcr.io: server is https://ghcr.io, not the local registry "
            f"(https://{REGISTRY}/v2/ghcr.io)",
        ),
        (
            rule("ghcr.io") + '[host."https://ghcr.io"]\n',
            f'containerd: ghcr.io: [host."https://ghcr.io"] is not the local registry '
            f"(https://{REGISTRY}/v2/ghcr.io)",
        ),
        (
            rule("ghcr.io", host=False)
            + f'skip_verify = true\n[host."https://{REGISTRY}/v2/ghcr.io"]\n'
            f'override_path = true\nca = "{CA}"\ncapabilities = ["pull", "resolve"]\n',
            "containerd: ghcr.io: skip_verify is set: TLS is not checked",
        ),
        (
            rule("ghcr.io").replace(CA, "/tmp/other.crt", 1),
            f"containerd: ghcr.io: ca is '/tmp/other.crt', not {CA}",
        ),
        (
            rule("ghcr.io").replace('["pull", "resolve"]', '["pull", "resolve", "push"]', 1),
            "containerd: ghcr.io: capabilities allow push (the engines only pull)",
        ),
        ("server = [", None),  # unreadable: containerd falls back; the audit names the file
    ],
)
def test_every_way_out_is_named(
    mirrors: ModuleType, tmp_path: Path, text: str, problem: str | None
) -> None:
    (tmp_path / "config.toml").write_text(DEBIAN_CONFIG)
    mirrors.configure(params(tmp_path), check_mode=False)
    write_rules(tmp_path, {**DEFAULT, "docker.io": rule("docker.io"), "ghcr.io": text})
    problems = mirrors.audit(params(tmp_path))["problems"]
    if problem is None:
        (only,) = problems
        assert only.startswith(f"containerd: {tmp_path}/certs.d/ghcr.io/hosts.toml: ")
    else:
        assert problems == [problem]


def test_a_missing_rule_an_extra_rule_and_no_config_path_are_named(
    mirrors: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "config.toml").write_text(DEBIAN_CONFIG)
    write_rules(tmp_path, {"ghcr.io": rule("ghcr.io"), "quay.io": rule("quay.io")})
    assert mirrors.audit(params(tmp_path))["problems"] == [
        "containerd: config_path is '', not "
        f"{tmp_path}/certs.d: the CRI plugin ignores the mirror rules",
        "containerd: no _default rule: an image of a registry the bundle does not name would be "
        "pulled from that registry",
        "containerd: docker.io has no hosts.toml: its images would be pulled from docker.io",
        "containerd: quay.io has a rule but no image of the bundle",
    ]


def test_docker_mirrors_are_a_fallback_and_named(mirrors: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(DEBIAN_CONFIG)
    mirrors.configure(params(tmp_path), check_mode=False)
    write_rules(tmp_path, {**DEFAULT, "docker.io": rule("docker.io"), "ghcr.io": rule("ghcr.io")})
    daemon = {"registry-mirrors": [f"https://{REGISTRY}"], "insecure-registries": [REGISTRY]}
    (tmp_path / "daemon.json").write_text(json.dumps(daemon))
    result = mirrors.audit(params(tmp_path))
    assert result["docker"] == daemon
    assert result["problems"] == [
        f"docker: registry-mirrors ['https://{REGISTRY}']: Docker falls back to Docker Hub "
        "after every mirror",
        f"docker: insecure-registries ['{REGISTRY}']",
    ]
    (tmp_path / "daemon.json").write_text('{"runtimes": {}}')
    assert mirrors.audit(params(tmp_path))["problems"] == []


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS server on loopback with a certificate from a fresh CA: (host:port, the CA)."""
    ca = make_ca(tmp_path / "ca")
    crt, key = issue(ca, tmp_path / "tls", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}", ca
    listener.close()


def test_a_wrong_ca_is_named(
    mirrors: ModuleType, tmp_path: Path, tls_server: tuple[str, Path]
) -> None:
    address, ca = tls_server
    assert mirrors.probe_tls(address, str(ca)) == []
    other = make_ca(tmp_path / "other", "someone else's CA")
    assert mirrors.probe_tls(address, str(other)) == [
        f"registry {address}: its certificate does not verify against {other} (unable to get "
        "local issuer certificate): every pull fails"
    ]
