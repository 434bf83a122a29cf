#!/usr/bin/python
"""Ansible module: copy one image from the bundle's OCI layout into the registry by digest."""

from __future__ import annotations

import json
from typing import Any

from ansible.module_utils.appliance_registry import (
    Client,
    RegistryError,
    read_auth_file,
    seed_image,
)
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_registry_seed
short_description: Push one image of the bundle into the registry by digest, unless it is there
description:
  - Asks the registry for the image's manifest by digest (HEAD, as the push identity); when it is
    there, reads it back and pushes nothing. Otherwise copies the image with skopeo
    (--all --preserve-digests) from the bundle's OCI layout to
    <registry>/<upstream host>/<path>@<digest>, then reads it back. Reading back checks the
    manifest's bytes against the digest and every blob the manifest and the bundle name, with
    its size.
  - Supports check mode (reports whether it would push).
options:
  config:
    description: The registry's client configuration (registry.json).
    type: path
    required: true
  layout:
    description: The bundle's release directory (an OCI image layout).
    type: path
    required: true
  ref:
    description: The image's reference as the spec wrote it (the layout's ref name).
    type: str
    required: true
  digest:
    description: The manifest digest the bundle holds for it.
    type: str
    required: true
  blobs:
    description: The image's blobs from the signed manifest, sha256 hex to size.
    type: dict
    default: {}
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Seed each image from the bundle's OCI layout, by digest
  appliance_registry_seed:
    config: /etc/appliance/registry/registry.json
    layout: "{{ appliance_bundle_dir }}"
    ref: "{{ item.ref }}"
    digest: "{{ item.digest }}"
    blobs: "{{ item.blobs }}"
  loop: "{{ appliance_topology.registry.images }}"
"""

RETURN = r"""
target:
  description: Where the image is in the registry.
  returned: always
  type: str
  sample: 127.0.0.1:5000/ghcr.io/org/app@sha256:3f1c0a9e7d2b4c5a6e8f0d1b2c3a4e5f60718293a4
pushed:
  description: Whether this run pushed it (in check mode, whether it would).
  returned: always
  type: bool
  sample: false
checked:
  description: Manifests and blobs read back and matched.
  returned: always
  type: int
  sample: 4
"""


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    with open(params["config"], encoding="utf-8") as handle:
        config = json.load(handle)
    username, password = read_auth_file(config["push_auth"], config["address"])
    client = Client(config["address"], config["ca_file"], username, password)
    done = seed_image(
        client,
        params["layout"],
        params["ref"],
        params["digest"],
        {str(k): int(v) for k, v in params["blobs"].items()},
        authfile=config["push_auth"],
        cert_dir=config["cert_dir"],
        check_only=check_mode,
    )
    return {
        "changed": bool(done["pushed"]),
        "target": done["target"],
        "pushed": done["pushed"],
        "checked": done["checked"],
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "required": True},
            "layout": {"type": "path", "required": True},
            "ref": {"type": "str", "required": True},
            "digest": {"type": "str", "required": True},
            "blobs": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module.params, module.check_mode))
    except (RegistryError, OSError, KeyError, ValueError) as exc:
        module.fail_json(msg=f"cannot seed {module.params['ref']}: {exc}")


if __name__ == "__main__":
    main()
