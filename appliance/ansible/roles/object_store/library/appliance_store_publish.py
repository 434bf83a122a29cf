#!/usr/bin/python
"""Ansible module: publish files into the appliance's store, each under its sha256."""

from __future__ import annotations

import os
from typing import Any

from ansible.module_utils.appliance_store import (
    StoreError,
    load_config,
    open_store,
    publish,
)
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_store_publish
short_description: Put files into the store under sha256/<hex>, unless there, and read them back
description:
  - Opens the store that the client configuration names (an S3 server, or a directory), creates
    the purpose's bucket if missing, and uploads each file under its digest with the digest in
    its metadata. The server checks each upload against the signed payload digest.
  - An object already there with that digest and size is left alone (nothing is uploaded twice);
    each upload is read back and hashed when read_back is true.
  - Supports check mode (reports what it would upload).
options:
  config:
    description: The store's client configuration (store.json).
    type: path
    required: true
  purpose:
    description: Which bucket (a key of the configuration's buckets).
    type: str
    default: models
  root:
    description: Directory the files' paths are relative to (the release directory).
    type: path
    required: true
  files:
    description: The files, as appliance install lists a model's files.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Path under root.
        type: str
        required: true
      src:
        description: >-
          Absolute path of the file, where it is not under root (a site model's file in the
          depot's directory store, published into the S3 store at install).
        type: path
        required: false
      sha256:
        description: Expected sha256, hex.
        type: str
        required: true
      size:
        description: Size in bytes.
        type: int
        required: true
  read_back:
    description: Read every upload back and compare its sha256.
    type: bool
    default: true
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Publish the bundle's model files into the store
  appliance_store_publish:
    config: /etc/appliance/object-store/store.json
    purpose: models
    root: "{{ appliance_bundle_dir }}"
    files: "{{ appliance_models | map(attribute='files') | flatten }}"
"""

RETURN = r"""
uploaded:
  description: Digests uploaded by this run (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [3f1c0a9e7d2b4c5a6e8f0d1b2c3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f]
present:
  description: Digests that were already in the store, left alone.
  returned: always
  type: list
  elements: str
  sample: []
verified:
  description: Digests read back after upload and matched.
  returned: always
  type: list
  elements: str
  sample: [3f1c0a9e7d2b4c5a6e8f0d1b2c3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f]
"""


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    store = open_store(load_config(params["config"]))
    created = False if check_mode else store.ensure_bucket(params["purpose"])
    unique = {f["sha256"].lower(): f for f in params["files"]}
    files = [
        (sha256, f.get("src") or os.path.join(params["root"], f["path"]), int(f["size"]))
        for sha256, f in sorted(unique.items())
    ]
    report = publish(
        store, params["purpose"], files, read_back=params["read_back"], check_mode=check_mode
    )
    return {
        "changed": created or bool(report.uploaded),
        "uploaded": report.uploaded,
        "present": report.present,
        "verified": report.verified,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "required": True},
            "purpose": {"type": "str", "default": "models"},
            "root": {"type": "path", "required": True},
            "files": {"type": "list", "elements": "dict", "required": True},
            "read_back": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module.params, module.check_mode))
    except (StoreError, OSError, KeyError, ValueError) as exc:
        module.fail_json(msg=f"cannot publish into the store ({module.params['config']}): {exc}")


if __name__ == "__main__":
    main()
