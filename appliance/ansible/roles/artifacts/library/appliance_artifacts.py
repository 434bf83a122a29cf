#!/usr/bin/python
"""Ansible module: place bundle files on a host by digest, from the bundle or from the depot."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from typing import IO, Any, cast

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_artifacts
short_description: Place files from the bundle, each checked against its sha256
description:
  - Each file comes from a local path (the bundle's release directory on the depot, hard-linked
    when it shares the filesystem, else copied) or from a URL (the depot's repository server).
  - Bytes are hashed while they are written to a temporary file next to the destination, which
    replaces the destination only when the digest matches, so a bad copy never becomes visible.
  - A destination that already holds the right bytes is left alone; a hard link to the source is
    recognised without reading it.
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
      src:
        description: Local source path (one of src, url).
        type: path
      url:
        description: HTTP URL of the source (one of src, url).
        type: str
  mode:
    description: Mode of the placed files.
    type: str
    default: "0644"
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Lay out a model's file by digest, hard-linked from the bundle on the depot
  appliance_artifacts:
    files:
      - src: "{{ appliance_bundle_dir }}/blobs/sha256/{{ model_file.sha256 }}"
        dest: /var/lib/appliance/models/tiny-llama/tiny-llama.gguf
        sha256: "{{ model_file.sha256 }}"

- name: Fetch a wheel from the depot's repository server, on another host
  appliance_artifacts:
    files:
      - url: "http://{{ appliance_depot_address }}:8080/blobs/sha256/{{ wheel.sha256 }}"
        dest: "/opt/appliance/wheels/llamacpp/{{ wheel.name }}"
        sha256: "{{ wheel.sha256 }}"
    mode: "0644"
"""

RETURN = r"""
placed:
  description: Destinations written by this run (in check mode, those that would be); a file
    that already held the right bytes is not listed.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/appliance/models/tiny-llama/tiny-llama.gguf]
"""

CHUNK = 256 * 1024


def _digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _holds(dest: str, sha256: str, src: str | None) -> bool:
    if not os.path.isfile(dest) or os.path.islink(dest):
        return False
    if src and os.path.exists(src) and os.path.samefile(src, dest):
        return True
    return _digest(dest) == sha256


def _copy(reader: IO[bytes], writer: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: reader.read(CHUNK), b""):
        digest.update(block)
        writer.write(block)
    return digest.hexdigest()


def _place(item: dict[str, Any], mode: str) -> None:
    dest, sha256, src, url = item["dest"], item["sha256"].lower(), item.get("src"), item.get("url")
    directory = os.path.dirname(dest)
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, f".{os.path.basename(dest)}.partial")
    if os.path.lexists(partial):
        os.unlink(partial)
    try:
        got: str | None = None
        if src:
            try:
                os.link(src, partial)
                got = sha256  # the bundle's file, verified when the bundle was staged
            except OSError:
                with open(src, "rb") as reader, open(partial, "wb") as writer:
                    got = _copy(reader, writer)
        else:
            # The depot's repository server, an http URL from the installer, never a user's;
            # main() lets through only items with exactly one of src and url.
            with (
                urllib.request.urlopen(cast("str", url), timeout=60) as reader,  # noqa: S310
                open(partial, "wb") as writer,
            ):
                got = _copy(reader, writer)
        if got != sha256:
            raise ValueError(f"{src or url}: sha256 {got}, expected {sha256}")
        if not src or not os.path.samefile(src, partial):
            os.chmod(partial, int(mode, 8))
        os.replace(partial, dest)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "required": True},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    placed: list[str] = []
    for item in module.params["files"]:
        if (
            not item.get("dest")
            or not item.get("sha256")
            or bool(item.get("src")) == bool(item.get("url"))
        ):
            module.fail_json(
                msg=f"each file needs dest, sha256 and exactly one of src, url: {item!r}"
            )
        if _holds(item["dest"], item["sha256"].lower(), item.get("src")):
            continue
        placed.append(item["dest"])
        if module.check_mode:
            continue
        try:
            _place(item, module.params["mode"])
        except (OSError, ValueError) as exc:
            module.fail_json(msg=f"cannot place {item['dest']}: {exc}", placed=placed[:-1])
    module.exit_json(changed=bool(placed), placed=placed)


if __name__ == "__main__":
    main()
