#!/usr/bin/python
"""Ansible module: Harbor's projects (one per upstream registry) and the two robot accounts."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.appliance_harbor_api import PULL, PUSH, HarborAPI, HarborError
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_harbor_accounts
short_description: Make Harbor's projects and the appliance's push and pull robot accounts
description:
  - One private project per upstream registry the bundle's images come from, so the local
    layout keeps upstream names; a system robot that pulls and pushes (seeding only) and one
    that only pulls (the container engines).
  - Harbor shows a robot's secret once, when it is made or rotated; the module returns it then
    and null otherwise. The calling task sets no_log and stores it root-only.
options:
  url:
    description: Harbor's https URL.
    type: str
    required: true
  ca_file:
    description: The CA that issued Harbor's certificate.
    type: path
    required: true
  admin_password:
    description: Harbor's admin password (generated on site).
    type: str
    required: true
    no_log: true
  projects:
    description: Project names (the upstream registry hosts).
    type: list
    elements: str
    required: true
  push_robot:
    description: Name of the seeding robot.
    type: str
    default: appliance-push
  pull_robot:
    description: Name of the pull-only robot.
    type: str
    default: appliance-pull
  rotate:
    description: Give both robots new secrets.
    type: bool
    default: false
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Make the projects and robots
  appliance_harbor_accounts:
    url: https://198.18.10.2
    ca_file: /etc/appliance/site-ca/ca.crt
    admin_password: "{{ harbor_admin_password }}"
    projects: [ghcr.io, docker.io]
  no_log: true
"""

RETURN = r"""
push:
  description: The push robot's name and secret when made or rotated by this run, else null.
  returned: always
  type: dict
pull:
  description: The pull robot's name and secret when made or rotated by this run, else null.
  returned: always
  type: dict
created_projects:
  description: Projects this run made.
  returned: always
  type: list
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "ca_file": {"type": "path", "required": True},
            "admin_password": {"type": "str", "required": True, "no_log": True},
            "projects": {"type": "list", "elements": "str", "required": True},
            "push_robot": {"type": "str", "default": "appliance-push"},
            "pull_robot": {"type": "str", "default": "appliance-pull"},
            "rotate": {"type": "bool", "default": False},
        },
        supports_check_mode=False,
    )
    params: dict[str, Any] = module.params
    try:
        api = HarborAPI(params["url"], "admin", params["admin_password"], params["ca_file"])
        created = [p for p in params["projects"] if api.ensure_project(p)]
        push = api.ensure_robot(params["push_robot"], params["projects"], PUSH, params["rotate"])
        pull = api.ensure_robot(params["pull_robot"], params["projects"], PULL, params["rotate"])
    except (HarborError, OSError, ValueError) as error:
        module.fail_json(msg=str(error))
    changed = bool(created or push or pull)
    module.exit_json(changed=changed, push=push, pull=pull, created_projects=created)


if __name__ == "__main__":
    main()
