#!/usr/bin/python
"""Ansible module: the registry's push and pull identities, made on site, in root-only files."""

from __future__ import annotations

import base64
import grp
import json
import os
import secrets
import subprocess
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_registry_credentials
short_description: Make the registry's push and pull identities and every file derived from them
description:
  - Each identity's password is generated here (Python's secrets) at the first run, or anew
    with rotate, and kept in a containers-auth.json file (root, 0600) that skopeo, podman and
    docker read. An existing file keeps its password (a new address only rewrites the file).
  - From them it writes the front's htpasswd (both identities, bcrypt, readable by nginx's
    workers), the registry's own htpasswd (the push identity alone) and the front's
    Authorization header for the registry (root, 0600). The derived files are written again
    only when a password changed or one of them is missing (bcrypt hashes are salted).
  - No password is returned or logged; run it with no_log. Supports check mode.
options:
  address:
    description: HOST:PORT of the registry, the key in the auth files.
    type: str
    required: true
  push_auth:
    description: The push identity's auth file.
    type: path
    required: true
  pull_auth:
    description: The pull identity's auth file.
    type: path
    required: true
  push_user:
    description: The push identity's name.
    type: str
    default: appliance-push
  pull_user:
    description: The pull identity's name.
    type: str
    default: appliance-pull
  front_htpasswd:
    description: The front's password file (both identities).
    type: path
    required: true
  front_group:
    description: The group of nginx's workers, which read the front's password file.
    type: str
    default: www-data
  backend_htpasswd:
    description: The registry's own password file (push identity).
    type: path
    required: true
  backend_group:
    description: The group the registry runs as, which reads its password file.
    type: str
    required: true
  backend_auth:
    description: The nginx include that presents the push identity to the registry.
    type: path
    required: true
  rotate:
    description: Make new passwords for both identities.
    type: bool
    default: false
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Generate the push and pull identities and their password files
  appliance_registry_credentials:
    address: 127.0.0.1:5000
    push_auth: /etc/appliance/registry/push-auth.json
    pull_auth: /etc/appliance/registry/pull-auth.json
    front_htpasswd: /etc/appliance/registry/htpasswd
    backend_htpasswd: /etc/appliance/registry/backend.htpasswd
    backend_group: docker-registry
    backend_auth: /etc/appliance/registry/backend-auth.conf
  no_log: true
"""

RETURN = r"""
rotated:
  description: The identities whose password this run made.
  returned: always
  type: list
  elements: str
  sample: [appliance-push, appliance-pull]
written:
  description: The files this run wrote (in check mode, would write).
  returned: always
  type: list
  elements: str
  sample: [/etc/appliance/registry/htpasswd]
"""


def _token(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def _auth_json(address: str, username: str, password: str) -> str:
    return json.dumps({"auths": {address: {"auth": _token(username, password)}}}, indent=2) + "\n"


def _read(path: str, username: str) -> tuple[str | None, str | None]:
    """(password, address) of ``username`` in an auth file; (None, None) if absent or another's."""
    try:
        with open(path, encoding="utf-8") as handle:
            auths = json.load(handle)["auths"]
        ((address, entry),) = auths.items()
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    return (password, address) if user == username and password else (None, None)


def _write(path: str, content: str, mode: int, group: str = "root") -> None:
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.new")
    if os.path.exists(temporary):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchown(fd, 0, grp.getgrnam(group).gr_gid)
        os.fchmod(fd, mode)
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _bcrypt(username: str, password: str) -> str:
    # htpasswd reads the password on stdin (-i), never from its command line.
    result = subprocess.run(  # noqa: S603 - a fixed program, the name is the role's
        ["htpasswd", "-niB", username],  # noqa: S607 - apache2-utils, from the bundle
        input=password,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip() + "\n"


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    address = params["address"]
    identities = {
        "push": (params["push_user"], params["push_auth"]),
        "pull": (params["pull_user"], params["pull_auth"]),
    }
    passwords: dict[str, str] = {}
    rotated: list[str] = []
    written: list[str] = []
    for kind, (username, path) in identities.items():
        password, known = (None, None) if params["rotate"] else _read(path, username)
        if password is None:
            password = secrets.token_urlsafe(30)
            rotated.append(username)
        passwords[kind] = password
        if username in rotated or known != address:
            written.append(path)
    derived = [params["front_htpasswd"], params["backend_htpasswd"], params["backend_auth"]]
    if rotated or not all(os.path.exists(path) for path in derived):
        written += derived
    if check_mode or not written:
        return {"changed": bool(written), "rotated": rotated, "written": written}
    for kind, (username, path) in identities.items():
        if path in written:
            _write(path, _auth_json(address, username, passwords[kind]), 0o600)
    if params["front_htpasswd"] in written:
        push_user, pull_user = params["push_user"], params["pull_user"]
        _write(
            params["front_htpasswd"],
            _bcrypt(push_user, passwords["push"]) + _bcrypt(pull_user, passwords["pull"]),
            0o640,
            params["front_group"],
        )
        _write(
            params["backend_htpasswd"],
            _bcrypt(push_user, passwords["push"]),
            0o640,
            params["backend_group"],
        )
        header = _token(push_user, passwords["push"])
        _write(params["backend_auth"], f'proxy_set_header Authorization "Basic {header}";\n', 0o600)
    return {"changed": True, "rotated": rotated, "written": written}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "address": {"type": "str", "required": True},
            "push_auth": {"type": "path", "required": True},
            "pull_auth": {"type": "path", "required": True},
            "push_user": {"type": "str", "default": "appliance-push"},
            "pull_user": {"type": "str", "default": "appliance-pull"},
            "front_htpasswd": {"type": "path", "required": True},
            "front_group": {"type": "str", "default": "www-data"},
            "backend_htpasswd": {"type": "path", "required": True},
            "backend_group": {"type": "str", "required": True},
            "backend_auth": {"type": "path", "required": True},
            "rotate": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module.params, module.check_mode))
    except (OSError, KeyError) as exc:
        module.fail_json(msg=f"cannot write the registry's identities: {exc}")
    except subprocess.CalledProcessError as exc:
        # Its text names the command only; stdin (the password) is never shown.
        module.fail_json(msg=f"htpasswd failed (exit {exc.returncode}): {exc.stderr.strip()}")


if __name__ == "__main__":
    main()
