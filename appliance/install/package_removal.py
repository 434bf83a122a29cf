"""After a rollback, the OS packages only the release rolled back from had added come off again.

Which packages: those the left release's signed manifest declares (its roles' ``role_packages``
and its spec's ``packages``) and the release that runs again does not. On each host, only those
that release's first run installed (local_repo kept the list of packages from before it, in
``/var/lib/appliance/packages/``), never Debian's essential, required or important packages, and
never one whose removal would take another package with it: the play
(``playbooks/remove_packages.yml``) decides that on the host. It runs from this installer's own
Ansible content, before the release that comes back is played, so that release's play and
verify see the end state. A removal that fails is reported and the rollback goes on: the
packages it leaves stay installed, and nothing runs them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from appliance.bundle import layout
from appliance.bundle.manifest import parse_manifest
from appliance.errors import ApplianceError
from appliance.install import new_run_dir, runner_env
from appliance.install.inventory import single_box
from appliance.roles import ANSIBLE_DIR
from appliance.runner import TaskEvent, run_playbook

PLAYBOOK = "playbooks/remove_packages.yml"


def declared(root: Path, release: str) -> set[str] | None:
    """The OS packages the staged ``release`` declares (None: its manifest cannot be read)."""
    path = root / "releases" / release / layout.MANIFEST
    try:
        manifest = parse_manifest(path.read_bytes(), str(path))
    except (OSError, ApplianceError):
        return None
    return set(manifest.packages).union(*manifest.role_packages.values())


def added_by(root: Path, left: str, back_to: str) -> list[str]:
    """The packages ``left`` declares and ``back_to`` does not (none when either is unknown),
    compared by name: a spec's ``jq=1.6-2.1`` or ``jq:amd64`` is the package ``jq`` another
    release declares plainly. Each as dpkg-query names it: without a version pin, its arch kept."""
    gone, kept = declared(root, left), declared(root, back_to)
    if gone is None or kept is None:
        return []
    names = {_name(p) for p in kept}
    return sorted({p.split("=", 1)[0] for p in gone if _name(p) not in names})


def _name(package: str) -> str:
    return re.split(r"[=:]", package, maxsplit=1)[0]


def remove_added(
    root: Path,
    left: str,
    back_to: str,
    inventory: str | None,
    on_event: Callable[[TaskEvent], None],
    on_note: Callable[[str], None],
) -> None:
    """Run the removal play for the packages only ``left`` added, on the inventory's hosts."""
    names = added_by(root, left, back_to)
    if not names:
        return
    on_note(f"removing what {left} alone installed of: {', '.join(names)}")
    run_dir = new_run_dir(root)
    hosts = Path(inventory) if inventory else single_box(run_dir / "single-box.yml", sys.executable)
    result = run_playbook(
        data_dir=run_dir,
        project_dir=ANSIBLE_DIR,
        playbook=PLAYBOOK,
        inventory=hosts.resolve(),
        extravars={"appliance_release_left": left, "appliance_packages_added": names},
        envvars=runner_env(ANSIBLE_DIR),
        on_event=on_event,
    )
    if result.rc != 0:
        on_note(
            f"the packages only {left} added could not be removed (the run's record: "
            f"{result.artifacts}); they stay installed, and nothing runs them"
        )
