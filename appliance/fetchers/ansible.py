"""ansible: the playbooks and roles install runs, from the package's own ``ansible/`` directory,
as one reproducible tar (``bundle.content.ansible_content_tar``).

The tar depends on content only, so its digest names it: a rebuild whose content did not change
finds that blob already in the store and writes nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

from appliance import __version__
from appliance.bundle.content import ansible_content_tar
from appliance.bundle.manifest import Component
from appliance.bundle.store import Blob
from appliance.errors import BuildError
from appliance.fetchers.source import Job, Part, Request, blob_entry
from appliance.roles import ANSIBLE_DIR

NAME: Final = "ansible-content"


class AnsibleSource:
    def check(self, request: Request) -> Path:
        if not (ANSIBLE_DIR / "playbooks" / "site.yml").is_file():
            raise BuildError(
                f"appliance's Ansible content is missing: {ANSIBLE_DIR}/playbooks/site.yml",
                hint="reinstall appliance: its package data (appliance/ansible) is incomplete",
            )
        return ANSIBLE_DIR

    def fetch(self, job: Job, plan: Path) -> Blob:
        data = ansible_content_tar(plan)
        sha256 = hashlib.sha256(data).hexdigest()
        blob = Blob(sha256, len(data)) if job.landing.has(sha256) else job.landing.add_bytes(data)
        job.take(blob.sha256)
        return blob

    def describe(self, job: Job, fetched: Blob) -> Part:
        part = Part()
        part.add(
            Component(name=NAME, kind=NAME, version=__version__),
            blob_entry(fetched.sha256, fetched.size, NAME, NAME, f"{NAME}.tar"),
        )
        return part
