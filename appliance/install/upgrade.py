"""Upgrade with automatic rollback, rollback on purpose, and settling an interrupted run.

An upgrade applies the new release with the install flow but leaves ``current`` where it is,
runs ``appliance verify`` against the new release, and only then commits (``current`` moves,
releases.json records it). When the play or verify fails, every host goes back to the release
that ran before (its packages from its own repository at its exact versions, downgrades
included; its models, units and configuration, by its own play), which is verified again; the
report names what failed and whether the rollback held. ``rollback`` is the same machinery on
purpose, towards a release still staged on the depot. Each step is recorded before it starts
(upgrade_state.py), so a run killed half way is settled by the next one. What a transition does
once it starts (apply, verify, commit or return) lives in transition.py; here, what it goes to.

Data is kept in both directions because no release owns it: keys, the audit log, site models
and the stores live outside ``<root>/releases`` (README: "Releases and what is data").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from appliance.bundle.verify import open_bundle
from appliance.errors import InstallError
from appliance.install import InstallOptions
from appliance.install.inventory import load_inventory
from appliance.install.prepare import prepare_plan
from appliance.install.release_state import StateRecord, current_release
from appliance.install.transition import (
    Events,
    Notes,
    describe,
    release_key,
    settle,
    staged_options,
    transition,
)
from appliance.install.upgrade_report import UpgradeReport
from appliance.install.upgrade_state import (
    Phase,
    load_phase,
    save_phase,
    transition_lock,
    wedged_message,
)
from appliance.names import RELEASE_RE
from appliance.progress import Progress

__all__ = [
    "RollbackOptions",
    "UpgradeOptions",
    "UpgradeReport",
    "rollback",
    "settle",
    "upgrade",
]


@dataclass(frozen=True)
class UpgradeOptions:
    install: InstallOptions  # the new bundle, its key, the inventory, root, site...
    # What verify probes after the apply and after a rollback (appliance verify's options).
    egress_targets: tuple[str, ...]
    internal_targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class RollbackOptions:
    egress_targets: tuple[str, ...]
    internal_targets: tuple[str, ...] = ()
    to: str | None = None  # default: the previous release (releases.json)
    # The key to check the release's signature with; default: the key it was installed with.
    pubkey: Path | None = None
    inventory: Path | None = None
    root: Path = Path("/opt/appliance")
    internal_cidrs: tuple[str, ...] = ()


def upgrade(
    options: UpgradeOptions,
    on_event: Events,
    progress: Progress | None = None,
    on_note: Notes = lambda _note: None,
) -> UpgradeReport:
    """Apply the bundle, verify, commit; roll back by itself when apply or verify fails."""
    root = options.install.root
    _need_local_depot(options.install.inventory)
    with transition_lock(root, "appliance upgrade"):
        with open_bundle(options.install.bundle, options.install.pubkey) as bundle:
            target = bundle.manifest.release
        interrupted = load_phase(root)
        same = bool(
            interrupted is not None
            and interrupted.unfinished
            and interrupted.kind == "upgrade"
            and interrupted.target == target
            and interrupted.phase != "rollback-failed"
        )
        if same and interrupted is not None:
            doing = describe(interrupted)
            on_note(f"finishing the upgrade to {target} that was interrupted while {doing}")
        else:
            settled = settle(root, options.install.pubkey, on_event, progress, on_note)
            if settled is not None and settled.outcome == "rollback-failed":
                return settled  # the hosts are in no state to take another release
        origin = current_release(root)
        if origin is None:
            raise InstallError(
                f"nothing is installed under {root} yet: there is nothing to upgrade",
                hint="install the first release with install.sh (or appliance install)",
            )
        # Only the roles whose inputs the plan changes; the whole play when this run finishes
        # an interrupted one (what it left half done is not in any plan). Planned before the
        # phase is saved: a refusal here changes nothing.
        scope = None if same else prepare_plan(options.install).scope
        if scope is not None:
            on_note(scope.note())
        phase = save_phase(
            root,
            Phase(
                kind="upgrade",
                phase="staged",
                target=target,
                origin=interrupted.origin if same and interrupted else origin,
                egress_targets=options.egress_targets,
                internal_targets=options.internal_targets,
                inventory=_path(options.install.inventory),
                internal_cidrs=options.install.internal_cidrs,
            ),
        )
        apply = replace(
            options.install,
            commit=False,
            exact_versions=True,
            run_roles=None if scope is None else scope.roles,
        )
        prior = interrupted if same else None
        return transition(
            root, phase, apply, on_event, progress, on_note, prior, options.install.pubkey
        )


def rollback(
    options: RollbackOptions,
    on_event: Events,
    progress: Progress | None = None,
    on_note: Notes = lambda _note: None,
) -> UpgradeReport:
    """Return every host to the previous release (or ``options.to``) still on the depot."""
    root = options.root
    if options.to is not None and not RELEASE_RE.fullmatch(options.to):
        # A release is a directory name under releases/, never a path (.. is the root itself).
        raise InstallError(
            f"{options.to!r} is not a release label",
            hint="name a release as appliance releases lists it; nothing was changed",
        )
    _need_local_depot(options.inventory)
    with transition_lock(root, "appliance rollback"):
        # After a failed rollback, --to names the way out: that release goes on every host at
        # once (no other attempt at the origin first), and its commit clears the record.
        wedged = load_phase(root)
        recovering = wedged is not None and wedged.phase == "rollback-failed" and bool(options.to)
        if recovering and wedged is not None:
            on_note(f"{wedged_message(wedged)}: recovering with release {options.to}")
        else:
            settled = settle(root, options.pubkey, on_event, progress, on_note)
            if settled is not None and (options.to is None or settled.outcome == "rollback-failed"):
                return settled  # going back from an interrupted upgrade is the rollback asked for
        origin = current_release(root)
        record = StateRecord.load(root)
        target = options.to or record.previous
        if origin is None:
            raise InstallError(f"nothing is installed under {root}", hint="install a release first")
        if target is None:
            raise InstallError(
                f"{root}/releases.json names no previous release to go back to",
                hint="name the release with --to (appliance releases lists them)",
            )
        if target == origin and not recovering:
            raise InstallError(
                f"release {target} is already current", hint="name another release with --to"
            )
        if not (root / "releases" / target).is_dir():
            raise InstallError(
                f"release {target} is not on this depot any more (pruned, or never staged here)",
                hint=f"carry release {target}'s bundle to the depot and install it with "
                "--allow-downgrade; nothing was changed",
            )
        # The key first: a release whose key is unknown is refused before anything is recorded.
        with release_key(root, target, options.pubkey) as key:
            phase = save_phase(
                root,
                Phase(
                    kind="rollback",
                    phase="staged",
                    target=target,
                    origin=origin,
                    egress_targets=options.egress_targets,
                    internal_targets=options.internal_targets,
                    inventory=_path(options.inventory),
                    internal_cidrs=options.internal_cidrs,
                ),
            )
            apply = staged_options(root, target, key, phase)
            # A recovery refused before any host changed leaves the failed rollback's record.
            prior = wedged if recovering else None
            return transition(
                root, phase, apply, on_event, progress, on_note, prior, options.pubkey
            )


def _need_local_depot(inventory: Path | None) -> None:
    if inventory is not None and not load_inventory(inventory).depot_is_local:
        raise InstallError(
            "upgrade and rollback run on the depot, which keeps the releases and their record",
            hint="run them on the depot host (install.sh there, or its appliance)",
        )


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())
