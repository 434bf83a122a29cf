"""A plain install against the depot's transitions: it holds their lock for its whole run, and
it, or ``rollback --to``, is the way out of a failed rollback. Real bundles, signatures and
locks; the bundles here are too small to reach a play, which these tests do not need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.bundle.signing import keygen
from appliance.errors import ApplianceError, InstallError, RollbackFailedError
from appliance.install import InstallOptions, install
from appliance.install.install_lock import install_lock
from appliance.install.upgrade import RollbackOptions, rollback
from appliance.install.upgrade_state import (
    Phase,
    load_phase,
    lock_held,
    save_phase,
    transition_lock,
)
from tests.fixtures.bundles import make_bundle
from tests.fixtures.releases import install as complete
from tests.fixtures.releases import stage


@pytest.fixture
def key(tmp_path: Path) -> Path:
    keygen(tmp_path / "key", "install lock test")
    return tmp_path / "key"


def wedged(root: Path) -> Phase:
    """r1 ran; the upgrade to r2 failed, and so did going back to r1."""
    stage(root, "r1", 1)
    stage(root, "r2", 2)
    complete(root, "r1")
    return save_phase(
        root,
        Phase(
            kind="upgrade",
            phase="rollback-failed",
            target="r2",
            origin="r1",
            failure="verify failed 1 of 9 checks",
            egress_targets=("http://198.19.255.10/",),
        ),
    )


def test_a_plain_install_holds_the_lock_for_its_whole_run(tmp_path: Path, key: Path) -> None:
    root = tmp_path / "root"
    options = InstallOptions(make_bundle(tmp_path, key), key.with_suffix(".pub"), root=root)
    held: list[bool] = []
    with pytest.raises(ApplianceError):  # this bundle is no stack to install: it stops there
        install(options, lambda _e: None, None, lambda _note: held.append(lock_held(root)))
    assert held and all(held), held
    assert not lock_held(root)


def test_an_install_beside_an_upgrade_is_refused_naming_it(tmp_path: Path, key: Path) -> None:
    root = tmp_path / "root"
    options = InstallOptions(make_bundle(tmp_path, key), key.with_suffix(".pub"), root=root)
    notes: list[str] = []
    with transition_lock(root, "appliance upgrade"), pytest.raises(InstallError) as refused:
        install(options, lambda _e: None, None, notes.append)
    assert refused.value.message.startswith(f"appliance upgrade (pid {os.getpid()}, since 20")
    assert "holds this depot's transition lock" in refused.value.message
    assert refused.value.hint == (
        "wait for it to finish (appliance releases shows where it stands), then run this "
        "again; nothing was changed"
    )
    assert notes == []  # the bundle was not even opened
    assert not (root / "releases").exists()


def test_an_install_after_a_failed_rollback_does_not_try_it_again(
    tmp_path: Path, key: Path
) -> None:
    """Before: every install first went back to r1 again, failed again, and stopped there."""
    root = tmp_path / "root"
    record = wedged(root)
    options = InstallOptions(make_bundle(tmp_path, key), key.with_suffix(".pub"), root=root)
    notes: list[str] = []
    with pytest.raises(ApplianceError) as stopped:
        install(options, lambda _e: None, None, notes.append)
    assert not isinstance(stopped.value, RollbackFailedError)
    assert notes[0] == (
        "the upgrade to r2 failed (verify failed 1 of 9 checks) and so did the rollback to r1: "
        "this install replaces it"
    )
    assert load_phase(root) == record  # that install did not complete: the state stays


def test_an_install_that_completes_settles_the_failed_rollback(tmp_path: Path) -> None:
    root = tmp_path / "root"
    wedged(root)
    options = InstallOptions(root / "bundle", root / "key.pub", root=root)
    notes: list[str] = []
    with install_lock(options, lambda _e: None, None, notes.append):
        complete(root, "r2")  # what a complete install run of r2's bundle does on the depot
    phase = load_phase(root)
    assert phase is not None and not phase.unfinished
    assert (phase.kind, phase.phase, phase.target, phase.origin) == (
        "install",
        "committed",
        "r2",
        "r1",
    )
    assert phase.failure == (
        "recovered by installing r2 after: the upgrade to r2 failed (verify failed 1 of 9 "
        "checks) and so did the rollback to r1"
    )
    assert notes[-1] == "r2 is installed and current: the failed rollback is settled"


def test_rollback_to_a_named_release_is_the_way_out(tmp_path: Path, key: Path) -> None:
    """``rollback --to r1`` (the origin itself here, current all along) goes straight to it; a
    refusal before any host changed leaves the failed rollback's record as it was."""
    root = tmp_path / "root"
    record = wedged(root)
    notes: list[str] = []
    options = RollbackOptions(
        egress_targets=record.egress_targets, to="r1", pubkey=key.with_suffix(".pub"), root=root
    )
    # The fixture's r1 is a manifest without signatures: opening it is where this one stops.
    with pytest.raises(ApplianceError) as refused:
        rollback(options, lambda _e: None, None, notes.append)
    assert not isinstance(refused.value, RollbackFailedError)
    assert notes == [
        "the upgrade to r2 failed (verify failed 1 of 9 checks) and so did the rollback to r1: "
        "recovering with release r1"
    ]
    assert load_phase(root) == record
