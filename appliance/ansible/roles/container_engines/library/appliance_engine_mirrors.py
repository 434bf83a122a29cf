#!/usr/bin/python
"""Ansible module: containerd's registry settings in its config.toml, and the audit of every
engine's mirror configuration against the upstream registries the bundle's images come from."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import tempfile
import tomllib
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_engine_mirrors
short_description: Point containerd at its hosts directory, or audit the engines' mirror rules
description:
  - C(mode=configure) sets, in containerd's config.toml (version 2), the CRI plugin's
    C(registry.config_path) to the hosts directory and the pull identity for the local registry
    (C(registry.configs."<registry>".auth)); every other key is kept as it is (NVIDIA's
    toolkit writes its runtimes into the same file). The file is rewritten only when one of
    those values differs, and is left root-only because it holds the pull password.
  - C(mode=audit) reads the hosts directory, config.toml and Docker's daemon.json and reports
    each way an image could be pulled from anywhere but the local registry, and whether the
    registry's certificate verifies against C(ca_file); it never fails on them (appliance
    verify judges).
  - Supports check mode.
options:
  mode:
    description: configure or audit.
    type: str
    default: configure
    choices: [configure, audit]
  registry:
    description: The local registry, host:port.
    type: str
    required: true
  upstreams:
    description: The upstream registries the bundle's images come from (audit).
    type: list
    elements: str
    default: []
  ca_file:
    description: The CA certificate every hosts.toml must name, and the registry's certificate
      must verify against (audit; empty skips both).
    type: path
    default: ""
  config:
    description: containerd's configuration file.
    type: path
    default: /etc/containerd/config.toml
  hosts_dir:
    description: containerd's hosts directory (certs.d).
    type: path
    default: /etc/containerd/certs.d
  docker_config:
    description: Docker's daemon.json (audit; absent is fine).
    type: path
    default: /etc/docker/daemon.json
  probe_tls:
    description: Open a TLS session with the registry, trusting only C(ca_file) (audit).
    type: bool
    default: true
  username:
    description: The pull identity's user name (configure).
    type: str
    default: ""
  password:
    description: The pull identity's password (configure).
    type: str
    default: ""
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Point containerd's CRI plugin at the hosts directory, with the pull identity
  appliance_engine_mirrors:
    registry: 198.18.10.10:5000
    username: "{{ pull.username }}"
    password: "{{ pull.password }}"
  no_log: true

- name: Audit the engines
  appliance_engine_mirrors:
    mode: audit
    registry: 198.18.10.10:5000
    upstreams: [docker.io, ghcr.io]
    ca_file: /etc/appliance/pki/ca.crt
"""

RETURN = r"""
containerd:
  description: What containerd would pull through (audit) - config_path and, per upstream
    directory, the server and hosts its hosts.toml names.
  returned: always
  type: dict
  sample:
    config_path: /etc/containerd/certs.d
    upstreams: {ghcr.io: {server: "https://198.18.10.10:5000/v2/ghcr.io", hosts: []}}
docker:
  description: Docker's registry-mirrors and insecure-registries (audit); null without daemon.json.
  returned: always
  type: dict
  sample: {registry-mirrors: [], insecure-registries: []}
problems:
  description: Each way a pull could leave the local registry, or a rule that is missing (audit).
  returned: always
  type: list
  elements: str
  sample: ["containerd: ghcr.io has no hosts.toml: its images would be pulled from ghcr.io"]
"""

CRI = "io.containerd.grpc.v1.cri"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def namespace(host: str) -> str:
    """The local registry's path prefix for an upstream (appliance/mirrors.py: the same rule)."""
    return host.replace(":", "_")


# containerd's rule for every registry without a directory of its own (containerd 1.6 reads it),
# sent to a prefix of the local registry that no repository can have (a path component may not
# start with '_'): an image from a registry the bundle does not name fails there, inside.
DEFAULT = "_default"
UNMIRRORED = "_unmirrored"


def mirror_url(registry: str, upstream: str) -> str:
    prefix = UNMIRRORED if upstream == DEFAULT else namespace(upstream)
    return f"https://{registry}/v2/{prefix}"


# A minimal TOML writer: containerd's config holds tables, strings, numbers, booleans and
# arrays of those; tomllib reads, Python 3.11 has nothing that writes.
def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list) and not any(isinstance(v, dict) for v in value):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ValueError(f"cannot write a {type(value).__name__} value back to TOML")


def dump_toml(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    lines = [f"{_key(k)} = {_value(v)}" for k, v in scalars]
    out = ""
    if prefix and (lines or not tables):
        out += "\n[" + ".".join(_key(p) for p in prefix) + "]\n"
    out += "".join(line + "\n" for line in lines)
    for key, table in tables:
        out += dump_toml(table, (*prefix, key))
    return out


def configured(current: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``current`` with the registry settings this role owns set."""
    if current.get("version", 2) != 2:
        raise ValueError(
            f"containerd config version {current.get('version')} is not 2 (containerd 1.6/1.7)"
        )
    data: dict[str, Any] = json.loads(json.dumps(current))
    data["version"] = 2
    registry = data.setdefault("plugins", {}).setdefault(CRI, {}).setdefault("registry", {})
    registry["config_path"] = params["hosts_dir"]
    # The CRI plugin refuses config_path beside the deprecated mirrors table.
    registry.pop("mirrors", None)
    configs = registry.setdefault("configs", {})
    if params["username"]:
        auth = configs.setdefault(params["registry"], {}).setdefault("auth", {})
        auth.update(username=params["username"], password=params["password"])
    else:
        configs.pop(params["registry"], None)
    if not configs:
        registry.pop("configs")
    return data


def configure(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    path = params["config"]
    try:
        with open(path, "rb") as handle:
            current = tomllib.load(handle)
    except FileNotFoundError:
        current = {}
    wanted = configured(current, params)
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else None
    changed = wanted != current or mode != 0o600
    if changed and not check_mode:
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".config.toml.")
        with os.fdopen(fd, "w") as out:
            out.write("# Managed in part by appliance (container_engines role): the CRI\n")
            out.write("# registry settings. Other keys are kept as found.\n")
            out.write(dump_toml(wanted))
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    return {"changed": changed, "containerd": {}, "docker": None, "problems": []}


def _read_toml(path: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle), None
    except FileNotFoundError:
        return None, None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return None, f"{path}: {exc}"


def _entry_problems(where: str, entry: dict[str, Any], ca_file: str) -> list[str]:
    problems = []
    if entry.get("override_path") is not True:
        problems.append(f"{where}: override_path is not true: the mirror's path is lost")
    if ca_file and entry.get("ca") != ca_file:
        problems.append(f"{where}: ca is {entry.get('ca')!r}, not {ca_file}")
    if "push" in entry.get("capabilities", ["push"]):
        problems.append(f"{where}: capabilities allow push (the engines only pull)")
    if entry.get("skip_verify"):
        problems.append(f"{where}: skip_verify is set: TLS is not checked")
    return problems


def audit_hosts_file(
    upstream: str, data: dict[str, Any], registry: str, ca_file: str
) -> tuple[dict[str, Any], list[str]]:
    """Where one hosts.toml sends pulls of ``upstream``, and what is wrong with it.

    containerd tries every [host."..."] entry and then the root ``server``, and fills an empty
    ``server`` with the upstream itself: a rule without ``server`` falls back to the internet.
    containerd 1.6 also cannot read a file without a [host] table, and then uses the upstream
    alone. So both must name the mirror, and nothing else."""
    wanted = mirror_url(registry, upstream)
    server = str(data.get("server", ""))
    hosts = data.get("host", {})
    seen = {"server": server, "hosts": sorted(hosts)}
    problems = []
    upstream_name = "each registry without a rule" if upstream == DEFAULT else upstream
    if not server:
        problems.append(f"{upstream}: hosts.toml has no server: pulls fall back to {upstream_name}")
    elif server != wanted:
        problems.append(f"{upstream}: server is {server}, not the local registry ({wanted})")
    else:
        problems += _entry_problems(upstream, data, ca_file)
    if not hosts:
        problems.append(
            f"{upstream}: hosts.toml has no [host] table: containerd 1.6 cannot read it and "
            f"pulls from {upstream_name}"
        )
    for name, entry in sorted(hosts.items()):
        if name != wanted:
            problems.append(f'{upstream}: [host."{name}"] is not the local registry ({wanted})')
        else:
            problems += _entry_problems(f"{upstream} [host]", entry, ca_file)
    return seen, problems


def audit_containerd(params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    config, error = _read_toml(params["config"])
    if error:
        problems.append(f"containerd: {error}")
    registry_cfg = ((config or {}).get("plugins", {}).get(CRI, {})).get("registry", {})
    config_path = registry_cfg.get("config_path", "")
    if config_path != params["hosts_dir"]:
        problems.append(
            f"containerd: config_path is {config_path!r}, not {params['hosts_dir']}: the CRI "
            "plugin ignores the mirror rules"
        )
    if registry_cfg.get("mirrors"):
        problems.append(f"containerd: config.toml has mirrors {sorted(registry_cfg['mirrors'])}")
    hosts_dir = params["hosts_dir"]
    found = sorted(os.listdir(hosts_dir)) if os.path.isdir(hosts_dir) else []
    upstreams: dict[str, Any] = {}
    expected = {*params["upstreams"], DEFAULT}
    for upstream in sorted(expected | set(found)):
        data, error = _read_toml(os.path.join(hosts_dir, upstream, "hosts.toml"))
        if error:
            problems.append(f"containerd: {error}")
            continue
        if data is None:
            if upstream == DEFAULT:
                problems.append(
                    f"containerd: no {DEFAULT} rule: an image of a registry the bundle does not "
                    "name would be pulled from that registry"
                )
            elif upstream in expected:
                problems.append(
                    f"containerd: {upstream} has no hosts.toml: its images would be pulled "
                    f"from {upstream}"
                )
            continue
        if upstream not in expected:
            problems.append(f"containerd: {upstream} has a rule but no image of the bundle")
        upstreams[upstream], found_problems = audit_hosts_file(
            upstream, data, params["registry"], params["ca_file"]
        )
        problems += [f"containerd: {p}" for p in found_problems]
    return {"config_path": config_path, "upstreams": upstreams}, problems


def audit_docker(params: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """Docker mirrors docker.io alone and always appends Docker Hub after its mirrors: a mirror
    here would be a fallback to the internet, so none may be configured."""
    try:
        with open(params["docker_config"], "rb") as handle:
            daemon = json.load(handle)
    except FileNotFoundError:
        return None, []
    except (OSError, ValueError) as exc:
        return None, [f"docker: {params['docker_config']}: {exc}"]
    seen = {k: list(daemon.get(k, [])) for k in ("registry-mirrors", "insecure-registries")}
    problems = []
    if seen["registry-mirrors"]:
        problems.append(
            f"docker: registry-mirrors {seen['registry-mirrors']}: Docker falls back to "
            "Docker Hub after every mirror"
        )
    if seen["insecure-registries"]:
        problems.append(f"docker: insecure-registries {seen['insecure-registries']}")
    return seen, problems


def probe_tls(registry: str, ca_file: str, timeout: float = 5.0) -> list[str]:
    """Whether the registry proves itself with the CA the engines trust: a wrong CA makes every
    pull fail, and this names it."""
    host, _, port = registry.rpartition(":")
    try:
        context = ssl.create_default_context(cafile=ca_file)
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return []
    except ssl.SSLCertVerificationError as exc:
        return [
            f"registry {registry}: its certificate does not verify against {ca_file} "
            f"({exc.verify_message}): every pull fails"
        ]
    except (OSError, ValueError) as exc:
        return [f"registry {registry}: no TLS session with the CA {ca_file}: {exc}"]


def audit(params: dict[str, Any]) -> dict[str, Any]:
    containerd, problems = audit_containerd(params)
    docker, docker_problems = audit_docker(params)
    probe = params["probe_tls"] and params["ca_file"]
    tls = probe_tls(params["registry"], params["ca_file"]) if probe else []
    return {
        "changed": False,
        "containerd": containerd,
        "docker": docker,
        "problems": problems + docker_problems + tls,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "default": "configure", "choices": ["configure", "audit"]},
            "registry": {"type": "str", "required": True},
            "upstreams": {"type": "list", "elements": "str", "default": []},
            "ca_file": {"type": "path", "default": ""},
            "config": {"type": "path", "default": "/etc/containerd/config.toml"},
            "hosts_dir": {"type": "path", "default": "/etc/containerd/certs.d"},
            "docker_config": {"type": "path", "default": "/etc/docker/daemon.json"},
            "probe_tls": {"type": "bool", "default": True},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
        },
        supports_check_mode=True,
    )
    try:
        if module.params["mode"] == "audit":
            module.exit_json(**audit(module.params))
        module.exit_json(**configure(module.params, module.check_mode))
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        module.fail_json(msg=f"{module.params['config']}: {exc}")


if __name__ == "__main__":
    main()
