"""``appliance releases prune``: old releases off the depot, with the installer venvs that only
they used, under the depot's transition lock (no install, upgrade or rollback meanwhile)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.install.release_state import list_releases, prune
from appliance.install.upgrade_state import transition_lock
from appliance.install.venvs import freed_bytes, in_use, release_venv, remove_tree, venvs_lock


@dataclass(frozen=True)
class Pruned:
    releases: list[str]
    venvs: list[str]  # the installer venvs removed with them
    freed: int  # bytes on disk


def prune_depot(root: Path, keep: int, *, dry_run: bool = False) -> Pruned:
    """Remove all releases but current, previous and the ``keep`` newest others (release_state
    ``prune``), and the installer venvs of those removed that no kept release, no link and no
    running installer uses (venvs.py); returns what went (or, with ``dry_run``, would)."""
    with transition_lock(root, "appliance releases prune"), venvs_lock(root):
        doomed = prune(root, keep, dry_run=True)
        kept = [r.release for r in list_releases(root)[0] if r.release not in doomed]
        spared = in_use(root, kept)
        venvs = sorted(
            {
                venv
                for release in doomed
                if (venv := release_venv(root, release)) is not None
                and venv.name not in spared
                and venv.is_dir()
            }
        )
        trees = [root / "releases" / name for r in doomed for name in (r, f"{r}.ansible")]
        freed = freed_bytes([*trees, *venvs])
        if not dry_run:
            prune(root, keep)
            for venv in venvs:
                remove_tree(venv, venv.parent)
    return Pruned(doomed, [str(v) for v in venvs], freed)
