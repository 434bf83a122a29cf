#!/usr/bin/python
"""Ansible module: evidence that every object in the store matches its digest."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.appliance_store import StoreError, audit, load_config, open_store
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_store_audit
short_description: Read every object of a store bucket and compare it with its digest
description:
  - Lists sha256/ in the purpose's bucket, reads each object and hashes it, and checks that each
    expected digest is there. Reports problems; never fails on them (appliance verify judges).
  - Changes nothing; supports check mode.
options:
  config:
    description: The store's client configuration (store.json).
    type: path
    required: true
  purpose:
    description: Which bucket.
    type: str
    default: models
  expected:
    description: Digests that must be in the store (the bundle's model files).
    type: list
    elements: str
    default: []
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Audit the store's models bucket
  appliance_store_audit:
    config: /etc/appliance/object-store/store.json
    expected: "{{ digests }}"
"""

RETURN = r"""
objects:
  description: How many objects the bucket holds under sha256/.
  returned: always
  type: int
  sample: 3
problems:
  description: One entry per object that does not match its name, or expected digest missing.
  returned: always
  type: list
  elements: dict
  sample: [{key: sha256/3f1c..., problem: bytes have sha256 9a0b...}]
error:
  description: Why the store could not be read at all (empty when it could).
  returned: always
  type: str
  sample: ""
"""


def run(params: dict[str, Any]) -> dict[str, Any]:
    try:
        store = open_store(load_config(params["config"]))
        objects = sum(1 for _ in store.list(params["purpose"]))
        problems = audit(store, params["purpose"], [d.lower() for d in params["expected"]])
    except (StoreError, OSError, KeyError) as exc:
        return {"changed": False, "objects": 0, "problems": [], "error": str(exc)}
    return {"changed": False, "objects": objects, "problems": problems, "error": ""}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "required": True},
            "purpose": {"type": "str", "default": "models"},
            "expected": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    module.exit_json(**run(module.params))


if __name__ == "__main__":
    main()
