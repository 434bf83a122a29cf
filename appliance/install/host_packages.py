"""Which OS packages a host installs by name: its share of an upgrade's package changes."""

from __future__ import annotations

import re

from appliance.bundle.manifest import Manifest
from appliance.install.topology import Topology

# Roles that include the site_ca role (and so install its packages) where they run.
_USES_SITE_CA = frozenset({"gateway", "object_store", "registry", "harbor"})


def installed_by_name(manifest: Manifest | None, topology: Topology | None, host: str) -> set[str]:
    """The OS packages ``host`` installs by name under ``manifest`` on ``topology``: the spec's
    ``packages.install`` and the ``<role>_packages`` of the roles it runs (build-bundle records
    them by role in the manifest)."""
    plan = topology.hosts.get(host) if topology is not None else None
    if manifest is None or plan is None:
        return set()
    # local_repo's own packages (nginx-light) are its serve tasks', run by the repository server;
    # local_repo installs the spec's list on every host (a version pin or an arch after a name).
    owners = {"local_repo" if r == "repo_server" else "" if r == "local_repo" else r
              for r in plan.roles}  # fmt: skip
    owners |= {"site_ca" for r in owners if r in _USES_SITE_CA}
    names = {p for role in owners for p in manifest.role_packages.get(role, [])}
    if "local_repo" in plan.roles:
        names |= {re.split(r"[=:]", p, maxsplit=1)[0] for p in manifest.packages}
    return names
