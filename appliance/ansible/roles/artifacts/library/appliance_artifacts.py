#!/usr/bin/python
"""Ansible module: place bundle files on a host by digest, from the bundle or from the depot."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: appliance_artifacts
short_description: Place files from the bundle, each checked against its sha256
description:
  - Each file comes from a local path (the bundle's release directory on the depot: hard-linked
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

RETURN = r"""
placed:
  description: Destinations written by this run.
  returned: always
  type: list
  elements: str
"""

import hashlib
import os
import shutil
import urllib.request

from ansible.module_utils.basic import AnsibleModule

CHUNK = 256 * 1024


def _digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _holds(dest, sha256, src):
    if not os.path.isfile(dest) or os.path.islink(dest):
        return False
    if src and os.path.exists(src) and os.path.samefile(src, dest):
        return True
    return _digest(dest) == sha256


def _copy(reader, writer):
    digest = hashlib.sha256()
    for block in iter(lambda: reader.read(CHUNK), b""):
        digest.update(block)
        writer.write(block)
    return digest.hexdigest()


def _place(item, mode):
    dest, sha256, src, url = item["dest"], item["sha256"].lower(), item.get("src"), item.get("url")
    directory = os.path.dirname(dest)
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, ".%s.partial" % os.path.basename(dest))
    if os.path.lexists(partial):
        os.unlink(partial)
    try:
        got = None
        if src:
            try:
                os.link(src, partial)
                got = sha256  # the bundle's file, verified when the bundle was staged
            except OSError:
                with open(src, "rb") as reader, open(partial, "wb") as writer:
                    got = _copy(reader, writer)
        else:
            with urllib.request.urlopen(url, timeout=60) as reader, open(partial, "wb") as writer:  # noqa: S310
                got = _copy(reader, writer)
        if got != sha256:
            raise ValueError("%s: sha256 %s, expected %s" % (src or url, got, sha256))
        if not src or not os.path.samefile(src, partial):
            os.chmod(partial, int(mode, 8))
        os.replace(partial, dest)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "required": True},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    placed = []
    for item in module.params["files"]:
        if not item.get("dest") or not item.get("sha256") or bool(item.get("src")) == bool(item.get("url")):
            module.fail_json(msg="each file needs dest, sha256 and exactly one of src, url: %r" % item)
        if _holds(item["dest"], item["sha256"].lower(), item.get("src")):
            continue
        placed.append(item["dest"])
        if module.check_mode:
            continue
        try:
            _place(item, module.params["mode"])
        except (OSError, ValueError) as exc:
            module.fail_json(msg="cannot place %s: %s" % (item["dest"], exc), placed=placed[:-1])
    module.exit_json(changed=bool(placed), placed=placed)


if __name__ == "__main__":
    main()
