"""Release order: may this bundle's release replace the one ``current`` points at?

The order is the publisher's, signed in the manifest: ``sequence``, a whole number that grows with
every release (release labels are free text, ``2026.11.0`` and ``1.0-rc1`` alike, and no rule
orders every such label the way each publisher means it), and ``upgrades_from``, the releases an
upgrade may start from. Decided before anything is staged, so a refusal changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import layout
from appliance.bundle.manifest import Manifest, parse_manifest
from appliance.bundle.verify import VerifiedBundle
from appliance.errors import ReleaseOrderError
from appliance.install.inventory import Inventory
from appliance.install.remote import depot_from_inventory, read_current_remote

_DOWNGRADE_HINT = (
    "install a newer release, or pass --allow-downgrade to go back on purpose; nothing was "
    "staged or changed"
)


@dataclass(frozen=True)
class Installed:
    """The release ``current`` points at: its signed manifest, as staged."""

    manifest: Manifest
    sha256: str


@dataclass(frozen=True)
class Decision:
    kind: str  # first, replay, upgrade, downgrade, unordered
    note: str


def read_current(root: Path) -> Installed | None:
    """The release under ``<root>/current``, or None before the first complete install."""
    try:
        data = (root / "current" / layout.MANIFEST).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return installed_from(data, str(root / "current" / layout.MANIFEST))


def check_order(
    bundle: VerifiedBundle, root: Path, inventory: Inventory, *, allow_downgrade: bool
) -> Decision:
    """``decide`` for ``bundle`` against the release current on the inventory's depot."""
    return decide(
        bundle.manifest,
        manifest_sha256(bundle),
        current_on_depot(root, inventory),
        allow_downgrade=allow_downgrade,
    )


def current_on_depot(root: Path, inventory: Inventory) -> Installed | None:
    """The release ``current`` points at on the inventory's depot (read over SSH when the
    depot is another machine), or None before the first complete install."""
    if inventory.depot_is_local:
        return read_current(root)
    depot = depot_from_inventory(inventory.depot, inventory.depot_vars)
    data = read_current_remote(depot, str(root))
    source = f"{depot.name}:{root}/current/{layout.MANIFEST}"
    return None if data is None else installed_from(data, source)


def manifest_sha256(bundle: VerifiedBundle) -> str:
    return hashlib.sha256(bundle.trust[layout.MANIFEST]).hexdigest()


def installed_from(data: bytes, source: str) -> Installed:
    return Installed(parse_manifest(data, source), hashlib.sha256(data).hexdigest())


def _label(manifest: Manifest) -> str:
    order = f"sequence {manifest.sequence}" if manifest.sequence else "no sequence"
    return f"{manifest.release} ({order})"


def decide(
    new: Manifest, new_sha256: str, current: Installed | None, *, allow_downgrade: bool = False
) -> Decision:
    """Whether ``new`` may replace ``current``: a Decision, or ReleaseOrderError naming both."""
    if current is None:
        return Decision("first", f"first install: release {_label(new)}")
    old = current.manifest
    if new.release == old.release and new_sha256 == current.sha256:
        return Decision(
            "replay",
            f"release {new.release} is already current: this is its own bundle again, so nothing "
            "is staged and no release changes; the play runs once more as an idempotent check",
        )
    before, after = (m.stack.get("orchestrator", "systemd") for m in (old, new))
    if before != after:
        # Nothing takes the old platform down: k3s's host-network workloads would keep the
        # runtime ports a systemd runtime needs, and systemd's runtimes those of k3s's pods.
        raise ReleaseOrderError(
            f"release {_label(new)} runs on stack.orchestrator {after}, the installed release "
            f"{_label(old)} on {before}: an upgrade cannot move an appliance between the two",
            hint=f"build the new release with orchestrator: {before}, or install it on hosts "
            "without the old release; nothing was staged or changed",
        )
    older = _is_older(new, old)
    if older is not None:
        if not allow_downgrade:
            raise ReleaseOrderError(
                f"release {_label(new)} is {older} than the installed release {_label(old)}",
                hint=_DOWNGRADE_HINT,
            )
        return Decision(
            "downgrade", f"downgrade from {_label(old)} to {_label(new)}, allowed by the operator"
        )
    if new.upgrades_from and old.release not in new.upgrades_from:
        raise ReleaseOrderError(
            f"release {new.release} upgrades only from {', '.join(new.upgrades_from)}; the "
            f"installed release is {old.release}",
            hint=f"install one of {', '.join(new.upgrades_from)} first, then this release; "
            "nothing was staged or changed",
        )
    if new.sequence is None:
        return Decision(
            "unordered",
            f"neither {old.release} nor {new.release} carries a build sequence: their order is "
            "not checked",
        )
    return Decision("upgrade", f"upgrade from {_label(old)} to {_label(new)}")


def _is_older(new: Manifest, old: Manifest) -> str | None:
    """How ``new`` fails to be newer than ``old`` (None when it is newer, or both are unordered).

    A bundle without a sequence cannot show it is newer than one with a sequence (every bundle
    built before releases were ordered is such a bundle), so it counts as older. An installed
    release without one accepts any ordered successor: there is nothing to compare against.
    """
    if old.sequence is None:
        return None
    if new.sequence is None:
        return "unordered (its manifest has no build sequence), so not newer"
    if new.sequence < old.sequence:
        return "older"
    if new.sequence == old.sequence:
        return "not newer (the same build sequence)"
    return None
