#!/usr/bin/python
"""Ansible module: presigned GETs of store objects, for hosts that hold no credentials."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.appliance_store import StoreError, load_config, open_store
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_store_urls
short_description: Presign a GET for each object a runtime host fetches from the store
description:
  - Runs on the store's host, which holds the credentials; computes a presigned URL (signature
    version 4, no request to the server) per digest. The URLs are bearer tokens for their
    lifetime; the calling task sets no_log.
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
  digests:
    description: sha256 digests (hex) of the objects.
    type: list
    elements: str
    required: true
  expires:
    description: Seconds each URL lasts.
    type: int
    default: 3600
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Presign the model files this host fetches
  appliance_store_urls:
    config: /etc/appliance/object-store/store.json
    digests: "{{ models | map(attribute='files') | flatten | map(attribute='sha256') | list }}"
  delegate_to: "{{ appliance_topology.object_store.host }}"
  no_log: true
"""

RETURN = r"""
urls:
  description: Digest to presigned URL.
  returned: always
  type: dict
  sample: {"3f1c...": "https://198.18.10.2:9000/appliance-models/sha256/3f1c...?X-Amz-..."}
ca_pem:
  description: The CA certificate the store's TLS certificate chains to (public).
  returned: always
  type: str
  sample: "-----BEGIN CERTIFICATE-----"
"""


def run(params: dict[str, Any]) -> dict[str, Any]:
    config = load_config(params["config"])
    store = open_store(config)
    urls = {
        d.lower(): store.url(params["purpose"], d.lower(), params["expires"])
        for d in params["digests"]
    }
    ca_pem = ""
    if config.get("ca_file"):
        with open(config["ca_file"], encoding="ascii") as handle:
            ca_pem = handle.read()
    return {"changed": False, "urls": urls, "ca_pem": ca_pem}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "required": True},
            "purpose": {"type": "str", "default": "models"},
            "digests": {"type": "list", "elements": "str", "required": True},
            "expires": {"type": "int", "default": 3600},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module.params))
    except (StoreError, OSError, KeyError) as exc:
        module.fail_json(msg=f"cannot presign store URLs ({module.params['config']}): {exc}")


if __name__ == "__main__":
    main()
