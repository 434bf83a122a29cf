"""``appliance upgrade``'s first half: verify the bundle, read the running release, decide the
order and compute the plan, all before anything changes anywhere.

The current release's manifest is the signed one staged with it, ``<root>/current/manifest.json``
on the depot (``releases.current_on_depot``); the topologies come from the same inventory for
both manifests, so the plan shows what moving between them changes on these hosts.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import Manifest
from appliance.bundle.verify import open_bundle
from appliance.errors import ApplianceError
from appliance.install import InstallOptions
from appliance.install.checks import check_can_install
from appliance.install.hosts_record import played, played_digest
from appliance.install.inventory import Inventory, load_inventory, single_box
from appliance.install.play_vars import plan_topology
from appliance.install.releases import Decision, current_on_depot, decide, manifest_sha256
from appliance.install.topology import Topology
from appliance.install.upgrade_plan import UpgradePlan, plan_upgrade
from appliance.install.upgrade_scope import Scope, upgrade_scope
from appliance.site.models import for_install as site_models_for_install


@dataclass(frozen=True)
class PlannedUpgrade:
    plan: UpgradePlan
    decision: Decision  # first, replay, upgrade, downgrade or unordered, with its note
    scope: Scope  # the roles the upgrade's play runs (upgrade_scope.py)


def prepare_plan(
    options: InstallOptions, on_note: Callable[[str], None] = lambda _note: None
) -> PlannedUpgrade:
    """The plan for installing ``options.bundle`` over the running release. Refuses (nothing
    changed) what install would refuse before staging: a bad signature, a bundle this release
    cannot install, an older release without ``allow_downgrade``, an unworkable topology."""
    with (
        open_bundle(options.bundle, options.pubkey) as bundle,
        tempfile.TemporaryDirectory(prefix="appliance-plan-") as scratch,
    ):
        manifest = bundle.manifest
        on_note(
            f"{bundle.label}: verified {manifest.name} {manifest.release}: signature good "
            "(every file is checked when the upgrade stages it)"
        )
        check_can_install(manifest)
        inventory = _inventory(options, Path(scratch))
        current = current_on_depot(options.root, inventory)
        decision = decide(
            manifest, manifest_sha256(bundle), current, allow_downgrade=options.allow_downgrade
        )
        site = _site_models(options, inventory, manifest)
        new_topology = plan_topology(inventory, manifest, site)
        old_topology = None
        if current is not None:
            old_topology = _old_topology(inventory, current.manifest, site, on_note)
        plan = plan_upgrade(
            current.manifest if current is not None else None,
            manifest,
            new_topology,
            old_topology,
            site_models=[m["name"] for m in site],
        )
        scope = upgrade_scope(
            plan,
            current.manifest if current is not None else None,
            manifest,
            old_topology,
            new_topology,
            hosts_as_played=old_topology is not None
            and played(options.root)
            == played_digest(old_topology, options.inventory, options.internal_cidrs),
        )
    return PlannedUpgrade(plan, decision, scope)


def _inventory(options: InstallOptions, scratch: Path) -> Inventory:
    if options.inventory is not None:
        return load_inventory(options.inventory)
    # The same single box install plans, written to a scratch directory: a plan writes nothing
    # under the root.
    return load_inventory(single_box(scratch / "single-box.yml", sys.executable))


def _site_models(
    options: InstallOptions, inventory: Inventory, manifest: Manifest
) -> list[dict[str, Any]]:
    """The site's models as install serves them (install/__init__.py's rule: on a local depot,
    and only when the release carries a runtime)."""
    bundle_models = {m["name"]: manifest.release for m in manifest.models()}
    if not inventory.depot_is_local or not bundle_models:
        return []
    object_store = str(manifest.stack.get("object_store", "filesystem"))
    return site_models_for_install(options.site, bundle_models, object_store)


def _old_topology(
    inventory: Inventory,
    manifest: Manifest,
    site: list[dict[str, Any]],
    on_note: Callable[[str], None],
) -> Topology | None:
    """The running release's topology on this inventory; None when it no longer plans (an
    inventory changed since), and the plan then starts every service of the new one."""
    try:
        return plan_topology(inventory, manifest, site if manifest.models() else [])
    except ApplianceError as exc:
        on_note(
            f"the running release {manifest.release} does not plan on this inventory "
            f"({exc.message}): the plan lists every service of the new release as started"
        )
        return None
