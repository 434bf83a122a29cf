#!/usr/bin/python
"""Ansible module: free and required bytes per filesystem, for the preflight role."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: appliance_disk_space
short_description: Group disk space requirements by filesystem and report free space
description:
  - For each requirement, finds the filesystem that will hold its path (the path need not
    exist yet; its nearest existing parent decides) and adds up what each filesystem must hold.
  - Reads only; supports check mode.
options:
  requirements:
    description: What must fit where.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Directory that will hold the data.
        type: path
        required: true
      bytes:
        description: Bytes needed there.
        type: int
        required: true
      purpose:
        description: A word for people, e.g. bundle or data.
        type: str
        required: true
  reserve_bytes:
    description: Bytes to keep free on every filesystem that holds a requirement.
    type: int
    default: 0
author: appliance maintainers
"""

RETURN = r"""
filesystems:
  description: One entry per filesystem, in the order first named.
  returned: always
  type: list
  elements: dict
  contains:
    mount: {description: Mount point, type: str}
    available_bytes: {description: Bytes available to unprivileged users, type: int}
    required_bytes: {description: Sum of requirements plus reserve_bytes, type: int}
    entries: {description: The requirements on this filesystem, type: list}
"""

import os

from ansible.module_utils.basic import AnsibleModule


def nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def mount_point(path: str) -> str:
    device = os.stat(path).st_dev
    while path != "/":
        parent = os.path.dirname(path)
        if os.stat(parent).st_dev != device:
            break
        path = parent
    return path


def filesystems(requirements: list[dict], reserve: int) -> list[dict]:
    by_device: dict[int, dict] = {}
    for requirement in requirements:
        existing = nearest_existing(requirement["path"])
        device = os.stat(existing).st_dev
        if device not in by_device:
            stats = os.statvfs(existing)
            by_device[device] = {
                "mount": mount_point(existing),
                "available_bytes": stats.f_bavail * stats.f_frsize,
                "required_bytes": reserve,
                "entries": [],
            }
        entry = by_device[device]
        entry["required_bytes"] += int(requirement["bytes"])
        entry["entries"].append(
            {"path": requirement["path"], "bytes": int(requirement["bytes"]),
             "purpose": requirement["purpose"]}
        )
    return list(by_device.values())


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "requirements": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "path": {"type": "path", "required": True},
                    "bytes": {"type": "int", "required": True},
                    "purpose": {"type": "str", "required": True},
                },
            },
            "reserve_bytes": {"type": "int", "default": 0},
        },
        supports_check_mode=True,
    )
    module.exit_json(
        changed=False,
        filesystems=filesystems(module.params["requirements"], module.params["reserve_bytes"]),
    )


if __name__ == "__main__":
    main()
