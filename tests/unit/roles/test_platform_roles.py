"""The k3s and harbor roles' configuration steps, run by Ansible itself on this machine: the
files they write from the installer's plan, the secrets they generate and merge on the host,
their modes, and a second run that changes nothing. The k3s binary and Harbor's installer are
not reachable here, so their service steps wait for the real artifacts (README, "Container
platform")."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.gpu.facts import parse_nvidia_smi_xml
from appliance.install.topology import plan
from appliance.platform.k3s import LocalRegistry
from appliance.platform.plan import harbor_plan, k3s_plan
from appliance.registry import auth_file
from appliance.roles import ROLES_DIR
from tests.fixtures.gpu_hosts import h200_xml
from tests.fixtures.harbor_template import TEMPLATE_KEYS
from tests.fixtures.roles import play_locally

DIGEST = "sha256:" + "cd" * 32
IMAGES = [f"ghcr.io/acme/llama-server@{DIGEST}", f"nvcr.io/nvidia/k8s-device-plugin@{DIGEST}"]


def topology() -> Any:
    return plan(
        hosts=["localhost"], depot="localhost", gpu_nodes=["localhost"],
        host_vars={"localhost": {"ansible_connection": "local"}},
        stack={"runtime": "llamacpp", "orchestrator": "systemd"}, models=[],
    )  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def changed(output: str) -> int:
    found = re.search(r"changed=(\d+)", output)
    assert found, output
    return int(found.group(1))


def test_k3s_writes_its_token_config_and_registries_with_the_pull_identity(tmp_path: Path) -> None:
    files = [{"name": n, "path": f"files/{n}", "sha256": "0" * 64}
             for n in ("k3s", "k3s-airgap-images", "k3s-install.sh")]  # fmt: skip
    registry = LocalRegistry("127.0.0.1:5000", "/etc/appliance/pki/ca.crt", "", "")
    platform = k3s_plan(topology(), images=IMAGES, registry=registry, workloads=[],
                        device_plugin_image=IMAGES[1], gpu_nodes=["localhost"])  # fmt: skip
    pull = tmp_path / "pull-auth.json"
    pull.write_text(auth_file("127.0.0.1:5000", "pull", "pull-secret-from-registry"))
    pull.chmod(0o600)
    extravars = {
        "appliance_files": files,
        "appliance_platform": {"k3s": platform},
        "appliance_gpu": parse_nvidia_smi_xml(h200_xml()),
        "appliance_registry_pull_auth": str(pull),
        "k3s_config_dir": str(tmp_path / "k3s"),
        "k3s_rancher_dir": str(tmp_path / "rancher"),
    }
    for directory in ("k3s", "rancher"):
        (tmp_path / directory).mkdir(mode=0o700)
    tasks = [{"ansible.builtin.include_role": {"name": "k3s", "tasks_from": step}}
             for step in ("preflight", "configure")]  # fmt: skip
    first = play_locally(tmp_path, tasks, extravars)
    assert "pull-secret-from-registry" not in first  # no_log held

    token = tmp_path / "k3s" / "token"
    assert mode(token) == 0o600 and re.fullmatch(r"K10[0-9a-f]{64}\n", token.read_text())
    config_file = tmp_path / "rancher" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    assert mode(config_file) == 0o600
    assert config["disable-default-registry-endpoint"] is True
    assert config["default-runtime"] == "nvidia"
    assert "appliance/gpu.product=NVIDIA-H200" in config["node-label"]
    registries_file = tmp_path / "rancher" / "registries.yaml"
    registries = yaml.safe_load(registries_file.read_text())
    assert mode(registries_file) == 0o600
    assert registries["configs"]["127.0.0.1:5000"] == {
        "auth": {"username": "pull", "password": "pull-secret-from-registry"},
        "tls": {"ca_file": "/etc/appliance/pki/ca.crt"},
    }
    assert set(registries["mirrors"]) == {"ghcr.io", "nvcr.io", "*"}

    again = play_locally(tmp_path, tasks, extravars)
    assert changed(again) == 0
    assert token.read_text() == token.read_text()


def test_harbor_generates_its_passwords_and_renders_harbor_yml_root_only(tmp_path: Path) -> None:
    files = [{"name": "harbor-offline-installer", "path": "files/h.tgz", "sha256": "0" * 64}]
    (tmp_path / "home" / "harbor").mkdir(parents=True)
    (tmp_path / "config").mkdir(mode=0o700)
    extravars = {
        "appliance_files": files,
        "appliance_platform": {"harbor": harbor_plan(topology(), IMAGES)},
        "harbor_home": str(tmp_path / "home"),
        "harbor_config_dir": str(tmp_path / "config"),
        "site_ca_dir": str(tmp_path / "pki"),
    }
    tasks = [{"ansible.builtin.include_role": {"name": "harbor", "tasks_from": step}}
             for step in ("preflight", "configure")]  # fmt: skip
    first = play_locally(tmp_path, tasks, extravars)
    passwords = json.loads((tmp_path / "config" / "passwords.json").read_text())
    assert mode(tmp_path / "config" / "passwords.json") == 0o600
    assert passwords["admin"] not in first and passwords["database"] not in first

    harbor_yml = tmp_path / "home" / "harbor" / "harbor.yml"
    rendered = yaml.safe_load(harbor_yml.read_text())
    assert mode(harbor_yml) == 0o600
    assert rendered["harbor_admin_password"] == passwords["admin"]
    assert rendered["database"]["password"] == passwords["database"]
    assert rendered["database"]["max_open_conns"] == 900  # the merge kept the plan's keys
    paths = {".".join(p) for p in _paths(rendered)}
    assert paths <= TEMPLATE_KEYS, paths - TEMPLATE_KEYS
    # Its certificate is the site CA's, for the depot's names.
    assert (tmp_path / "config" / "certs" / "public.crt").is_file()
    assert mode(tmp_path / "pki" / "ca" / "ca.key") == 0o600

    again = play_locally(tmp_path, tasks, extravars)
    assert changed(again) == 0
    assert json.loads((tmp_path / "config" / "passwords.json").read_text()) == passwords


def _paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for key, value in tree.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(_paths(value, (*prefix, key)))
    return found


def test_k3s_installs_the_bundles_files_checked_by_sha256(tmp_path: Path) -> None:
    """copy's own checksum option is SHA-1: the role checks the bundle's SHA-256 itself."""
    bundle = tmp_path / "bundle"
    (bundle / "files").mkdir(parents=True)
    files = []
    for name, body in (("k3s", b"binary"), ("k3s-airgap-images", b"tar"), ("k3s-install.sh", b"#")):
        (bundle / "files" / name).write_bytes(body)
        digest = hashlib.sha256(body).hexdigest()
        files.append({"name": name, "path": f"files/{name}", "sha256": digest})
    registry = LocalRegistry("127.0.0.1:5000", "/etc/appliance/pki/ca.crt", "", "")
    platform = k3s_plan(topology(), images=IMAGES, registry=registry, workloads=[],
                        device_plugin_image=None, gpu_nodes=[])  # fmt: skip
    extravars = {
        "appliance_files": files,
        "appliance_bundle_dir": str(bundle),
        "appliance_platform": {"k3s": platform},
        "k3s_home": str(tmp_path / "home"),
        "k3s_config_dir": str(tmp_path / "config"),
        "k3s_binary": str(tmp_path / "bin" / "k3s"),
        "k3s_images_dir": str(tmp_path / "images"),
        "k3s_rancher_dir": str(tmp_path / "rancher"),
    }
    (tmp_path / "bin").mkdir()
    tasks = [{"ansible.builtin.include_role": {"name": "k3s", "tasks_from": step}}
             for step in ("preflight", "install")]  # fmt: skip
    play_locally(tmp_path, tasks, extravars)
    assert (tmp_path / "bin" / "k3s").read_bytes() == b"binary"
    assert mode(tmp_path / "bin" / "k3s") == 0o755
    assert (tmp_path / "images" / "k3s-airgap-images.tar.zst").read_bytes() == b"tar"


@contextmanager
def healthy_harbor(certs: Path, port: int) -> Iterator[None]:
    """Harbor's health endpoint alone, healthy, over TLS with the certificate the role issued."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "healthy", "components": []}).encode()
            self.send_response(200 if self.path == "/api/v2.0/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Health)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "public.crt", certs / "private.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_harbor_runs_its_installer_again_until_harbor_came_up_healthy(tmp_path: Path) -> None:
    """A first run whose install.sh failed has already written harbor.yml: the next run must
    still run the installer (it ran only when harbor.yml changed); once Harbor answered healthy
    from this installer and harbor.yml, a run leaves it alone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    files = [{"name": "harbor-offline-installer", "path": "files/h.tgz", "sha256": "0" * 64}]
    home = tmp_path / "home" / "harbor"
    home.mkdir(parents=True)
    (tmp_path / "config").mkdir(mode=0o700)
    runs = tmp_path / "install-runs"
    install = home / "install.sh"
    install.write_text(f"#!/bin/sh\necho run >> {runs}\nexit 1\n")
    install.chmod(0o755)
    extravars = {
        "appliance_files": files,
        "appliance_platform": {"harbor": harbor_plan(topology(), IMAGES, port=port)},
        "harbor_home": str(tmp_path / "home"),
        "harbor_config_dir": str(tmp_path / "config"),
        "site_ca_dir": str(tmp_path / "pki"),
        "harbor_health_retries": 1,
        "harbor_health_delay": 0,
    }
    tasks = [{"ansible.builtin.include_role": {"name": "harbor", "tasks_from": step}}
             for step in ("preflight", "configure", "service")]  # fmt: skip
    with pytest.raises(AssertionError, match="Run Harbor's installer"):
        play_locally(tmp_path, tasks, extravars)
    assert runs.read_text() == "run\n"

    # The installer works now; harbor.yml is as the failed run left it.
    install.write_text(f"#!/bin/sh\necho run >> {runs}\n")
    with healthy_harbor(tmp_path / "config" / "certs", port):
        # Healthy, then the accounts step finds no API here: the run fails after the marker.
        with pytest.raises(AssertionError, match="Make the projects and robot accounts"):
            play_locally(tmp_path, tasks, extravars)
        assert runs.read_text() == "run\nrun\n"
        assert mode(tmp_path / "config" / "installed") == 0o600
        with pytest.raises(AssertionError, match="Make the projects and robot accounts"):
            play_locally(tmp_path, tasks, extravars)
    assert runs.read_text() == "run\nrun\n"  # came up healthy from these: not run again


def test_a_k3s_agent_gets_the_registry_s_ca_and_pull_identity_from_the_server(
    tmp_path: Path,
) -> None:
    """Under k3s the container_engines role, which hands the registry's CA and pull identity to
    the hosts beside the depot, does not run: the k3s role gives them to its agents itself. Two
    hosts on this machine, each with paths of its own (on real hosts the paths are the same)."""
    hosts = {"depot": "198.18.10.2", "gpu-1": "198.18.10.11"}
    topology_ = plan(
        hosts=list(hosts), depot="depot", gpu_nodes=["gpu-1"],
        host_vars={h: {"ansible_connection": "local", "ansible_host": a} for h, a in hosts.items()},
        stack={"runtime": "llamacpp", "orchestrator": "systemd"}, models=[],
    )  # fmt: skip
    files = [{"name": n, "path": f"files/{n}", "sha256": "0" * 64}
             for n in ("k3s", "k3s-airgap-images", "k3s-install.sh")]  # fmt: skip
    registry = LocalRegistry("198.18.10.2:5000", "/etc/appliance/pki/ca.crt", "", "")
    platform = k3s_plan(topology_, images=IMAGES, registry=registry, workloads=[],
                        device_plugin_image=IMAGES[1], gpu_nodes=["gpu-1"])  # fmt: skip
    inventory: dict[str, Any] = {"all": {"hosts": {}}}
    for host in hosts:
        root = tmp_path / host
        inventory["all"]["hosts"][host] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "k3s_rancher_dir": str(root / "rancher"),
            "appliance_registry_ca_cert": str(root / "pki" / "ca.crt"),
            "appliance_registry_pull_auth": str(root / "registry" / "pull-auth.json"),
        }
        (root / "rancher").mkdir(parents=True)
    # What the registry role left on the depot, and nowhere else.
    (tmp_path / "depot" / "pki").mkdir()
    (tmp_path / "depot" / "pki" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nsite\n")
    (tmp_path / "depot" / "registry").mkdir(mode=0o700)
    pull = tmp_path / "depot" / "registry" / "pull-auth.json"
    pull.write_text(auth_file("198.18.10.2:5000", "pull", "pull-secret-from-registry"))
    pull.chmod(0o600)
    # The token file is one path on both (the role reads the server's at the agent's path).
    (tmp_path / "k3s").mkdir(mode=0o700)
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "vars.json").write_text(json.dumps({
        "appliance_files": files, "appliance_platform": {"k3s": platform},
        "k3s_config_dir": str(tmp_path / "k3s"),
    }))  # fmt: skip
    tasks = [{"ansible.builtin.include_role": {"name": "k3s", "tasks_from": step}}
             for step in ("preflight", "configure")]  # fmt: skip
    (tmp_path / "play.yml").write_text(
        json.dumps([{"hosts": "all", "gather_facts": False, "tasks": tasks}])
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"),
         "-i", str(tmp_path / "inventory.json"), "-e", f"@{tmp_path / 'vars.json'}",
         str(tmp_path / "play.yml")],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROLES_DIR), "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pull-secret-from-registry" not in done.stdout + done.stderr
    agent = tmp_path / "gpu-1"
    assert (agent / "pki" / "ca.crt").read_text() == "-----BEGIN CERTIFICATE-----\nsite\n"
    assert mode(agent / "registry" / "pull-auth.json") == 0o600
    assert mode(agent / "registry") == 0o700
    registries = yaml.safe_load((agent / "rancher" / "registries.yaml").read_text())
    assert registries["configs"]["198.18.10.2:5000"]["auth"] == {
        "username": "pull",
        "password": "pull-secret-from-registry",
    }
    config = yaml.safe_load((agent / "rancher" / "config.yaml").read_text())
    assert config["server"] == "https://198.18.10.2:6443"


def test_k3s_writes_the_digest_list_verify_checks_for_each_model_it_serves(
    tmp_path: Path,
) -> None:
    """The runtime roles leave a <model>.sha256 per model, which appliance verify checks the
    files against; under k3s they do not run, so the k3s role writes them (and removes those of
    models no longer served)."""
    weights = tmp_path / "store" / "alpha.gguf"
    weights.parent.mkdir()
    weights.write_bytes(b"GGUF weights")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    files = [{"name": n, "path": f"files/{n}", "sha256": "0" * 64}
             for n in ("k3s", "k3s-airgap-images", "k3s-install.sh")]  # fmt: skip
    registry = LocalRegistry("127.0.0.1:5000", "/etc/appliance/pki/ca.crt", "", "")
    platform = k3s_plan(topology(), images=IMAGES, registry=registry, workloads=[],
                        device_plugin_image=None, gpu_nodes=[])  # fmt: skip
    model = {"name": "alpha", "digest": "sha256:" + digest, "format": "gguf",
             "files": [{"name": "alpha.gguf", "sha256": digest, "src": str(weights)}]}  # fmt: skip
    (tmp_path / "k3s").mkdir(mode=0o700)
    extravars: dict[str, Any] = {
        "appliance_files": files,
        "appliance_platform": {"k3s": platform},
        "appliance_topology": {"hosts": {"localhost": {"runtime": {"models": ["alpha"]}}}},
        "appliance_models": [model],
        "artifacts_models_dir": str(tmp_path / "models"),
        "k3s_config_dir": str(tmp_path / "k3s"),
    }
    tasks = [{"ansible.builtin.include_role": {"name": "k3s", "tasks_from": step}}
             for step in ("preflight", "models")]  # fmt: skip
    play_locally(tmp_path, tasks, extravars)
    listing = tmp_path / "k3s" / "alpha.sha256"
    assert listing.read_text() == f"{digest}  {tmp_path}/models/alpha/alpha.gguf\n"
    assert subprocess.run(["sha256sum", "--check", "--strict", str(listing)],
                          capture_output=True, check=False).returncode == 0  # fmt: skip
    assert changed(play_locally(tmp_path, tasks, extravars)) == 0

    # The model moves to another node: its list goes, or verify would judge files not served.
    extravars["appliance_topology"]["hosts"]["localhost"]["runtime"]["models"] = []
    play_locally(tmp_path, tasks, extravars)
    assert not listing.exists()
    assert (tmp_path / "k3s").is_dir()


def test_an_upgrade_that_ran_the_k3s_role_checks_the_models_digest_lists_again() -> None:
    from appliance.install.upgrade_scope import verify_skips

    assert "verify_models" not in verify_skips(frozenset({"k3s", "gateway"}))
    assert "verify_models" in verify_skips(frozenset({"gateway"}))


def test_harbor_gives_a_robot_whose_secret_was_never_kept_a_new_one(tmp_path: Path) -> None:
    """Harbor shows a robot's secret once. A run cut short after Harbor made the robots and
    before their secrets were kept left every later run without them (the module only returns a
    secret it made or rotated): the role now rotates a robot it holds no secret for."""
    from appliance.ansible.roles.harbor.module_utils.appliance_harbor_api import (
        PULL,
        PUSH,
        HarborAPI,
    )
    from tests.fixtures.harbor_installer.server import HarborState, serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    files = [{"name": "harbor-offline-installer", "path": "files/h.tgz", "sha256": "0" * 64}]
    home = tmp_path / "home" / "harbor"
    home.mkdir(parents=True)
    (tmp_path / "config").mkdir(mode=0o700)
    (home / "install.sh").write_text("#!/bin/sh\n")
    (home / "install.sh").chmod(0o755)
    extravars = {
        "appliance_files": files,
        "appliance_platform": {"harbor": harbor_plan(topology(), IMAGES, port=port)},
        "harbor_home": str(tmp_path / "home"),
        "harbor_config_dir": str(tmp_path / "config"),
        "site_ca_dir": str(tmp_path / "pki"),
    }
    steps = ("preflight", "configure")
    play_locally(tmp_path, [{"ansible.builtin.include_role": {"name": "harbor", "tasks_from": s}}
                            for s in steps], extravars)  # fmt: skip
    admin = json.loads((tmp_path / "config" / "passwords.json").read_text())["admin"]
    certs = tmp_path / "config" / "certs"
    state = HarborState(admin_password=admin)
    server = serve(
        state, ("127.0.0.1", port), str(certs / "public.crt"), str(certs / "private.key")
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # The robots exist (an earlier run made them) and their secrets went with that run.
        api = HarborAPI(f"https://127.0.0.1:{port}", "admin", admin, str(tmp_path / "pki/ca.crt"))
        projects = [str(p) for p in extravars["appliance_platform"]["harbor"]["projects"]]
        for project in projects:
            api.ensure_project(project)
        assert api.ensure_robot("appliance-push", projects, PUSH) is not None
        assert api.ensure_robot("appliance-pull", projects, PULL) is not None
        tasks = [{"ansible.builtin.include_role": {"name": "harbor", "tasks_from": s}}
                 for s in (*steps, "service")]  # fmt: skip
        output = play_locally(tmp_path, tasks, extravars)
    finally:
        server.shutdown()
        server.server_close()
    kept = json.loads((tmp_path / "config" / "robots.json").read_text())
    assert mode(tmp_path / "config" / "robots.json") == 0o600
    live = {r["name"]: r["secret"] for r in state.robots.values()}
    assert {kept[k]["name"] for k in ("push", "pull")} == set(live)
    for robot in ("push", "pull"):
        assert kept[robot]["secret"] == live[kept[robot]["name"]]
        assert kept[robot]["secret"] not in output
