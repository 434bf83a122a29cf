"""The machinery of a transition between releases, shared by upgrade and rollback.

A transition applies its target with the install flow but leaves ``current`` where it is, runs
``appliance verify`` against the target, and only then commits (``current`` moves,
releases.json records it). When the play or verify fails, every host goes back to the origin
(its packages from its own repository at its exact versions, downgrades included; its models,
units and configuration, by its own play), which is verified again. Each step is recorded before
it starts (upgrade_state.py), so ``settle`` finishes what a run killed half way left.

upgrade.py decides what a transition goes to (a new bundle, or a release staged on the depot);
what happens once it starts is here, in one place for both.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.errors import ApplianceError, InstallError
from appliance.install import InstallOptions, install, point_current
from appliance.install.package_removal import remove_added
from appliance.install.release_state import (
    StateRecord,
    current_release,
    record_failed,
    record_installed,
)
from appliance.install.upgrade_report import UpgradeReport
from appliance.install.upgrade_scope import verify_skips
from appliance.install.upgrade_state import Phase, advance, forget, load_phase, save_phase
from appliance.install.venvs import point_venv
from appliance.install.verify import VerifyOptions, verify
from appliance.install.verify_models import Check
from appliance.progress import Progress
from appliance.runner import TaskEvent

Events = Callable[[TaskEvent], None]
Notes = Callable[[str], None]


def transition(
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
        return return_to_origin(
            root, state, f"{error.message}", [], on_event, progress, on_note, pubkey
        )
    state = advance(root, state, "verifying")
    on_note(f"verifying {state.target} before it becomes current")
    skip = verify_skips(apply.run_roles)
    if skip:
        on_note("verify skips the evidence this play could not change: " + ", ".join(skip))
    try:
        checks, verify_report = verify_release(root, state, state.target, skip)
    except Exception as error:  # a verify that cannot run (its evidence, its inventory) failed
        reason = f"verify could not run: {getattr(error, 'message', None) or error}"
        return return_to_origin(root, state, reason, [], on_event, progress, on_note, pubkey)
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = f"verify failed {len(failed)} of {len(checks)} checks: " + "; ".join(
            f"{c.host}: {c.name}" for c in failed
        )
        return return_to_origin(root, state, reason, failed, on_event, progress, on_note, pubkey)
    commit(root, state.target, state.origin, on_note)
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


def return_to_origin(
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
        with release_key(root, origin, pubkey) as key:
            install(
                staged_options(root, origin, key, state),
                on_event,
                progress,
                on_note,
                settle=False,
            )
        checks, _ = verify_release(root, state, origin)
    except ApplianceError as error:
        advance(root, state, "rollback-failed")
        return report("rollback-failed", error.message, [])
    bad = [c for c in checks if not c.passed]
    if bad:
        advance(root, state, "rollback-failed")
        problem = "verify failed: " + "; ".join(f"{c.host}: {c.name}" for c in bad)
        return report("rollback-failed", problem, checks)
    commit(root, origin, current_release(root), on_note)
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
        commit(root, phase.target, phase.origin, on_note)
        advance(root, phase, "committed")
        return None
    on_note(
        f"the {phase.kind} to {phase.target} (from {phase.origin}) was interrupted while "
        f"{describe(phase)}: returning every host to {phase.origin} first"
    )
    reason = phase.failure or f"interrupted while {describe(phase)}"
    return return_to_origin(root, phase, reason, [], on_event, progress, on_note, pubkey)


def commit(root: Path, release: str, replaced: str | None, on_note: Notes) -> None:
    """``release`` runs and verified: ``current``, the record and the venv link name it."""
    if replaced != release:
        point_current(root, root / "releases" / release)
        record_installed(root, release, replaced)
    stayed = point_venv(root, release)
    if stayed is not None:
        on_note(stayed)


def verify_release(
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


def staged_options(root: Path, release: str, key: Path, phase: Phase) -> InstallOptions:
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
def release_key(root: Path, release: str, given: Path | None) -> Iterator[Path]:
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


def describe(phase: Phase) -> str:
    """What ``phase`` was doing, in words for a note."""
    return {
        "staged": "staging",
        "applying": "applying",
        "verifying": "verifying",
        "rolling-back": "rolling back",
        "rollback-failed": "rolling back (which failed)",
    }.get(phase.phase, phase.phase)
