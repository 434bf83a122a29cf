"""Upgrade with automatic rollback, rollback on purpose, and settling an interrupted run.

An upgrade applies the new release with the install flow but leaves ``current`` where it is,
runs ``appliance verify`` against the new release, and only then commits (``current`` moves,
releases.json records it). When the play or verify fails, every host goes back to the release
that ran before (its packages from its own repository at its exact versions, downgrades
included; its models, units and configuration, by its own play), which is verified again; the
report names what failed and whether the rollback held. ``rollback`` is the same machinery on
purpose, towards a release still staged on the depot. Each step is recorded before it starts
(upgrade_state.py), so a run killed half way is settled by the next one.

Data is kept in both directions because no release owns it: keys, the audit log, site models
and the stores live outside ``<root>/releases`` (README: "Releases and what is data").
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.bundle.verify import open_bundle
from appliance.errors import ApplianceError, InstallError
from appliance.install import InstallOptions, install, point_current
from appliance.install.inventory import load_inventory
from appliance.install.package_removal import remove_added
from appliance.install.prepare import prepare_plan
from appliance.install.release_state import (
    StateRecord,
    current_release,
    record_failed,
    record_installed,
)
from appliance.install.upgrade_report import UpgradeReport
from appliance.install.upgrade_scope import verify_skips
from appliance.install.upgrade_state import (
    Phase,
    advance,
    forget,
    load_phase,
    save_phase,
    transition_lock,
    wedged_message,
)
from appliance.install.venvs import point_venv
from appliance.install.verify import VerifyOptions, verify
from appliance.install.verify_models import Check
from appliance.names import RELEASE_RE
from appliance.progress import Progress
from appliance.runner import TaskEvent

__all__ = [
    "RollbackOptions",
    "UpgradeOptions",
    "UpgradeReport",
    "rollback",
    "settle",
    "upgrade",
]

Events = Callable[[TaskEvent], None]
Notes = Callable[[str], None]


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
            on_note(
                f"finishing the upgrade to {target} that was interrupted while {_what(interrupted)}"
            )
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
        return _transition(
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
        with _release_key(root, target, options.pubkey) as key:
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
            apply = _staged_options(root, target, key, phase)
            # A recovery refused before any host changed leaves the failed rollback's record.
            prior = wedged if recovering else None
            return _transition(
                root, phase, apply, on_event, progress, on_note, prior, options.pubkey
            )


def _transition(
    root: Path,
    phase: Phase,
    apply: InstallOptions,
    on_event: Events,
    progress: Progress | None,
    on_note: Notes,
    prior: Phase | None = None,
    pubkey: Path | None = None,
) -> UpgradeReport:
    """Apply ``phase.target``, verify it, commit; or return to ``phase.origin``. ``prior``: the
    interrupted run this one finishes, whose record stays if this one is refused. ``pubkey``:
    the operator's key, for an origin whose record keeps none (installed before keys were
    recorded)."""
    state = phase

    def applying() -> None:
        nonlocal state
        state = advance(root, state, "applying")
        if state.kind == "rollback" and state.origin is not None:  # the release left behind's
            remove_added(root, state.origin, state.target, state.inventory, on_event, on_note)

    try:
        report = install(apply, on_event, progress, on_note, before_play=applying, settle=False)
    except ApplianceError as error:
        if state.phase == "staged":
            # Refused before any host changed: nothing to undo, and nothing new to record.
            if prior is not None:
                save_phase(root, prior)
            else:
                forget(root)
            raise
        return _return(root, state, f"{error.message}", [], on_event, progress, on_note, pubkey)
    state = advance(root, state, "verifying")
    on_note(f"verifying {state.target} before it becomes current")
    skip = verify_skips(apply.run_roles)
    if skip:
        on_note("verify skips the evidence this play could not change: " + ", ".join(skip))
    try:
        checks, verify_report = _verify(root, state, state.target, skip)
    except Exception as error:  # a verify that cannot run (its evidence, its inventory) failed
        reason = f"verify could not run: {getattr(error, 'message', None) or error}"
        return _return(root, state, reason, [], on_event, progress, on_note, pubkey)
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = f"verify failed {len(failed)} of {len(checks)} checks: " + "; ".join(
            f"{c.host}: {c.name}" for c in failed
        )
        return _return(root, state, reason, failed, on_event, progress, on_note, pubkey)
    _commit(root, state.target, state.origin, on_note)
    state = advance(root, state, "committed")
    on_note(f"{state.target} verified and is current now")
    return UpgradeReport(
        state.kind,
        "committed",
        state.target,
        state.origin,
        current_release(root),
        checks=checks,
        verify_report=verify_report,
        install=report,
    )


def _return(
    root: Path,
    phase: Phase,
    failure: str,
    failed_checks: list[Check],
    on_event: Events,
    progress: Progress | None,
    on_note: Notes,
    pubkey: Path | None = None,
) -> UpgradeReport:
    """Put ``phase.origin`` back on every host, verify it, and point ``current`` at it."""
    origin = phase.origin
    state = advance(root, phase, "rolling-back", failure)
    record_failed(root, phase.target, failure)
    on_note(f"{phase.kind} to {phase.target} failed ({failure}): rolling back to {origin}")

    def report(outcome: str, problem: str | None, checks: list[Check]) -> UpgradeReport:
        return UpgradeReport(
            phase.kind,
            outcome,
            phase.target,
            origin,
            current_release(root),
            failure,
            problem,
            failed_checks,
            checks,
        )

    if origin is None:
        advance(root, state, "rollback-failed")
        return report("rollback-failed", "no release ran before it", [])
    if origin == phase.target:  # a recovery that reapplied the origin itself: no other try
        advance(root, state, "rollback-failed")
        return report("rollback-failed", f"{origin} itself is the release that failed", [])
    try:
        remove_added(root, phase.target, origin, state.inventory, on_event, on_note)
        with _release_key(root, origin, pubkey) as key:
            install(
                _staged_options(root, origin, key, state),
                on_event,
                progress,
                on_note,
                settle=False,
            )
        checks, _ = _verify(root, state, origin)
    except ApplianceError as error:
        advance(root, state, "rollback-failed")
        return report("rollback-failed", error.message, [])
    bad = [c for c in checks if not c.passed]
    if bad:
        advance(root, state, "rollback-failed")
        problem = "verify failed: " + "; ".join(f"{c.host}: {c.name}" for c in bad)
        return report("rollback-failed", problem, checks)
    _commit(root, origin, current_release(root), on_note)
    advance(root, state, "rolled-back")
    on_note(f"rolled back: {origin} runs again and verified")
    return report("rolled-back", None, checks)


def settle(
    root: Path,
    pubkey: Path | None,
    on_event: Events,
    progress: Progress | None,
    on_note: Notes,
) -> UpgradeReport | None:
    """Finish what an interrupted run left: its origin back on every host (None: nothing to do)."""
    phase = load_phase(root)
    if phase is None or not phase.unfinished:
        return None
    if phase.phase == "verifying" and current_release(root) == phase.target != phase.origin:
        # Killed between the commit's link and its record: verify had passed.
        _commit(root, phase.target, phase.origin, on_note)
        advance(root, phase, "committed")
        return None
    on_note(
        f"the {phase.kind} to {phase.target} (from {phase.origin}) was interrupted while "
        f"{_what(phase)}: returning every host to {phase.origin} first"
    )
    reason = phase.failure or f"interrupted while {_what(phase)}"
    return _return(root, phase, reason, [], on_event, progress, on_note, pubkey)


def _commit(root: Path, release: str, replaced: str | None, on_note: Notes) -> None:
    """``release`` runs and verified: ``current``, the record and the venv link name it."""
    if replaced != release:
        point_current(root, root / "releases" / release)
        record_installed(root, release, replaced)
    stayed = point_venv(root, release)
    if stayed is not None:
        on_note(stayed)


def _verify(
    root: Path, phase: Phase, release: str, skip: tuple[str, ...] = ()
) -> tuple[list[Check], Path]:
    return verify(
        VerifyOptions(
            skip=skip,
            egress_targets=phase.egress_targets,
            internal_targets=phase.internal_targets,
            inventory=Path(phase.inventory) if phase.inventory else None,
            root=root,
            release=root / "releases" / release,
        )
    )


def _staged_options(root: Path, release: str, key: Path, phase: Phase) -> InstallOptions:
    """Install options that apply a release already staged on the depot: opening it checks its
    signature again (its files were hashed when staged, and stage reuses them as they are)."""
    return InstallOptions(
        bundle=root / "releases" / release,
        pubkey=key,
        inventory=Path(phase.inventory) if phase.inventory else None,
        root=root,
        internal_cidrs=phase.internal_cidrs,
        allow_downgrade=True,
        commit=False,
        exact_versions=True,
    )


@contextmanager
def _release_key(root: Path, release: str, given: Path | None) -> Iterator[Path]:
    """``given`` (the operator's: a rotated key wins), else the publisher key ``release`` was
    installed with (releases.json)."""
    if given is not None:
        yield given
        return
    line = StateRecord.load(root).releases.get(release, {}).get("pubkey")
    if not isinstance(line, str) or not line:
        if given is None:
            raise InstallError(
                f"the depot's record keeps no publisher key for release {release}",
                hint="pass the key it was signed with: --pubkey KEY.pub",
            )
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=".key-", dir=root) as scratch:
        path = Path(scratch) / "publisher.pub"
        path.write_text(line + "\n", encoding="utf-8")
        yield path


def _need_local_depot(inventory: Path | None) -> None:
    if inventory is not None and not load_inventory(inventory).depot_is_local:
        raise InstallError(
            "upgrade and rollback run on the depot, which keeps the releases and their record",
            hint="run them on the depot host (install.sh there, or its appliance)",
        )


def _what(phase: Phase) -> str:
    return {
        "staged": "staging",
        "applying": "applying",
        "verifying": "verifying",
        "rolling-back": "rolling back",
        "rollback-failed": "rolling back (which failed)",
    }.get(phase.phase, phase.phase)


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())
