#!/usr/bin/python
"""Ansible module: evidence for appliance verify about the registry, as the pull identity."""

from __future__ import annotations

import json
from typing import Any

from ansible.module_utils.appliance_registry import (
    Client,
    RegistryError,
    audit,
    read_auth_file,
)
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_registry_audit
short_description: Read each image by digest as the pull identity, and try a push with it
description:
  - For each image, asks for its manifest by digest (HEAD, then GET, whose bytes must hash to
    the digest) with the pull identity; then starts a blob upload with the same identity, which
    the registry must refuse (an upload it accepts is cancelled at once).
  - Reads only (a refused push changes nothing); supports check mode.
options:
  config:
    description: The registry's client configuration (registry.json).
    type: path
    required: true
  images:
    description: The manifest's images.
    type: list
    elements: dict
    required: true
    suboptions:
      ref:
        description: The image's reference.
        type: str
        required: true
      repository:
        description: Its repository in the registry.
        type: str
        required: true
      digest:
        description: The manifest digest it must have.
        type: str
        required: true
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Read every image by digest as the pull identity and try a push
  appliance_registry_audit:
    config: /etc/appliance/registry/registry.json
    images: "{{ registry_expected_images }}"
  register: __registry_audit
"""

RETURN = r"""
images:
  description: Each image, whether the registry has its manifest with that digest, and why not.
  returned: success
  type: list
  elements: dict
  sample: [{ref: "ghcr.io/org/app@sha256:3f1c...", digest: "sha256:3f1c...", present: true}]
push_status:
  description: The HTTP status of the pull identity's attempt to start an upload (403 expected).
  returned: success
  type: int
  sample: 403
error:
  description: Why no evidence could be gathered.
  returned: failure
  type: str
  sample: "cannot reach the registry at 127.0.0.1:5000: connection refused"
"""


def run(params: dict[str, Any]) -> dict[str, Any]:
    with open(params["config"], encoding="utf-8") as handle:
        config = json.load(handle)
    username, password = read_auth_file(config["pull_auth"], config["address"])
    client = Client(config["address"], config["ca_file"], username, password)
    keys = ("ref", "repository", "digest")
    images = [{key: str(image[key]) for key in keys} for image in params["images"]]
    return dict(audit(client, images))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "required": True},
            "images": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "ref": {"type": "str", "required": True},
                    "repository": {"type": "str", "required": True},
                    "digest": {"type": "str", "required": True},
                },
            },
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(changed=False, **run(module.params))
    except (RegistryError, OSError, KeyError, ValueError) as exc:
        module.fail_json(msg=str(exc), error=str(exc))


if __name__ == "__main__":
    main()
