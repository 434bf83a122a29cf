#!/usr/bin/python
"""Ansible module: free and required bytes per filesystem, for the preflight role."""

from __future__ import annotations

import os
from typing import Any

from ansible.module_utils.basic import AnsibleModule

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

EXAMPLES = r"""
- name: Measure free space where the bundle and the data will go
  appliance_disk_space:
    requirements:
      - {path: /opt/appliance/releases, bytes: 5368709120, purpose: bundle}
      - {path: /var/lib/appliance, bytes: 1073741824, purpose: data}
    reserve_bytes: 1073741824
  register: __preflight_disk

- name: Every filesystem holds what it must
  ansible.builtin.assert:
    that: item.available_bytes >= item.required_bytes
    fail_msg: >-
      {{ item.mount }} has {{ item.available_bytes }} bytes free,
      needs {{ item.required_bytes }}
  loop: "{{ __preflight_disk.filesystems }}"
"""

RETURN = r"""
filesystems:
  description: One entry per filesystem, in the order first named.
  returned: always
  type: list
  elements: dict
  contains:
    mount:
      description: Mount point.
      type: str
      sample: /
    available_bytes:
      description: Bytes available to unprivileged users.
      type: int
      sample: 53687091200
    required_bytes:
      description: Sum of the requirements on this filesystem plus reserve_bytes.
      type: int
      sample: 7516192768
    entries:
      description: The requirements on this filesystem (path, bytes, purpose), in order.
      type: list
      elements: dict
      sample: [{path: /opt/appliance/releases, bytes: 5368709120, purpose: bundle}]
"""


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


def filesystems(requirements: list[dict[str, Any]], reserve: int) -> list[dict[str, Any]]:
    by_device: dict[int, dict[str, Any]] = {}
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
            {
                "path": requirement["path"],
                "bytes": int(requirement["bytes"]),
                "purpose": requirement["purpose"],
            }
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
