#!/usr/bin/python
"""Ansible module: model files from the store, through a local cache keyed by digest."""

from __future__ import annotations

import os
import ssl
import urllib.request
from typing import Any

from ansible.module_utils.appliance_s3 import write_checked
from ansible.module_utils.appliance_store import StoreError, file_sha256
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_store_fetch
short_description: Fetch files from the store into a cache by digest, and link them into place
description:
  - Each file lives once in cache_dir/sha256/<hex>. A cached file is hashed; when it matches it
    is used as it is (nothing is downloaded), when it does not it is fetched again.
  - A fetch goes through a partial file that becomes the cached file only when its sha256
    matches; the destination is then a hard link to the cached file.
  - Supports check mode.
options:
  files:
    description: What to place where.
    type: list
    elements: dict
    required: true
    suboptions:
      dest:
        description: Destination path.
        type: path
        required: true
      sha256:
        description: Expected sha256, hex.
        type: str
        required: true
  urls:
    description: Digest to presigned GET (appliance_store_urls); needed for files not cached.
    type: dict
    default: {}
  cache_dir:
    description: The cache, by digest.
    type: path
    default: /var/lib/appliance/model-cache
  ca_file:
    description: CA certificate the store's TLS certificate chains to.
    type: path
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Fetch this host's model files from the store
  appliance_store_fetch:
    files:
      - dest: /var/lib/appliance/models/tiny-llama/tiny-llama.gguf
        sha256: "{{ file.sha256 }}"
    urls: "{{ __urls.urls }}"
    ca_file: /etc/appliance/pki/ca.crt
"""

RETURN = r"""
fetched:
  description: Digests downloaded by this run (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [3f1c0a9e7d2b4c5a6e8f0d1b2c3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f]
refetched:
  description: Digests whose cached file no longer matched, fetched again.
  returned: always
  type: list
  elements: str
  sample: []
linked:
  description: Destinations (re)linked to the cache by this run.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/appliance/models/tiny-llama/tiny-llama.gguf]
"""


def _cached(path: str, sha256: str) -> bool | None:
    """True: cached and matching; False: cached but changed; None: not cached."""
    if not os.path.isfile(path):
        return None
    return bool(file_sha256(path) == sha256)


def _download(url: str, dest: str, sha256: str, ca_file: str | None) -> None:
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    # A presigned URL of the appliance's own store, made by appliance_store_urls.
    with urllib.request.urlopen(url, timeout=300, context=context) as answer:  # noqa: S310
        write_checked(answer, dest, sha256, f"store object sha256/{sha256}")
    os.chmod(dest, 0o644)


def _link(cache: str, dest: str) -> bool:
    if os.path.isfile(dest) and os.path.samefile(cache, dest):
        return False
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    partial = f"{dest}.partial"
    if os.path.lexists(partial):
        os.unlink(partial)
    os.link(cache, partial)
    os.replace(partial, dest)
    return True


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    fetched: list[str] = []
    refetched: list[str] = []
    linked: list[str] = []
    checked: dict[str, bool | None] = {}
    for item in params["files"]:
        sha256, dest = item["sha256"].lower(), item["dest"]
        cache = os.path.join(params["cache_dir"], "sha256", sha256)
        if sha256 not in checked:
            state = checked[sha256] = _cached(cache, sha256)
            if state is not True:
                url = params["urls"].get(sha256)
                if not url:
                    raise StoreError(f"{dest}: sha256 {sha256} is not cached and has no URL")
                (fetched if state is None else refetched).append(sha256)
                if not check_mode:
                    _download(url, cache, sha256, params.get("ca_file"))
        if check_mode:
            if checked[sha256] is not True or not os.path.isfile(dest):
                linked.append(dest)
        elif _link(cache, dest):
            linked.append(dest)
    return {
        "changed": bool(fetched or refetched or linked),
        "fetched": fetched,
        "refetched": refetched,
        "linked": linked,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "required": True},
            # Presigned URLs are bearer tokens: never in a log or the run's record.
            "urls": {"type": "dict", "default": {}, "no_log": True},
            "cache_dir": {"type": "path", "default": "/var/lib/appliance/model-cache"},
            "ca_file": {"type": "path"},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module.params, module.check_mode))
    except (StoreError, OSError) as exc:
        module.fail_json(msg=f"cannot fetch from the store: {exc}")


if __name__ == "__main__":
    main()
