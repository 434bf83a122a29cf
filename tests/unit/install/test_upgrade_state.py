"""The record of an upgrade or rollback in progress, what reads it, and settling a crashed one
that had already committed, on real directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import InstallError, RollbackFailedError, UpgradeRolledBackError
from appliance.install import InstallOptions
from appliance.install.install_lock import settle_interrupted
from appliance.install.release_state import (
    StateRecord,
    list_releases,
    prune,
    record_installed,
    record_staged,
)
from appliance.install.upgrade_report import UpgradeReport
from appliance.install.upgrade_state import (
    PHASE_FILE,
    Phase,
    advance,
    forget,
    load_phase,
    lock_held,
    save_phase,
    transition_lock,
)
from appliance.install.verify_models import Check
from tests.fixtures.releases import install, stage


def upgrade_phase(target: str, origin: str, phase: str = "staged") -> Phase:
    return Phase(
        kind="upgrade",
        phase=phase,
        target=target,
        origin=origin,
        egress_targets=("http://198.19.255.10/",),
        internal_cidrs=("198.18.10.0/24",),
    )


def test_each_phase_is_written_whole_and_read_back(tmp_path: Path) -> None:
    phase = save_phase(tmp_path, upgrade_phase("r2", "r1"))
    assert load_phase(tmp_path) == phase
    first = (tmp_path / PHASE_FILE).stat().st_ino
    applying = advance(tmp_path, phase, "applying")
    assert (tmp_path / PHASE_FILE).stat().st_ino != first  # a new file, renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == [PHASE_FILE]  # no temporary left
    assert load_phase(tmp_path) == applying
    assert applying.unfinished
    failed = advance(tmp_path, applying, "rolling-back", "verify failed 1 of 9 checks")
    assert load_phase(tmp_path) == failed
    assert failed.failure == "verify failed 1 of 9 checks"
    assert failed.egress_targets == ("http://198.19.255.10/",)
    done = advance(tmp_path, failed, "rolled-back")
    assert not done.unfinished
    assert load_phase(tmp_path) == done
    forget(tmp_path)
    assert load_phase(tmp_path) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"phase": "dancing", "kind": "upgrade", "target": "r2"}', b'{"phase":'],
)
def test_a_record_that_cannot_be_read_is_no_transition(tmp_path: Path, content: bytes) -> None:
    (tmp_path / PHASE_FILE).write_bytes(content)
    assert load_phase(tmp_path) is None


def test_one_transition_at_a_time(tmp_path: Path) -> None:
    assert not lock_held(tmp_path)
    with transition_lock(tmp_path):
        assert lock_held(tmp_path)
        with pytest.raises(InstallError) as refused, transition_lock(tmp_path):
            pass
        assert refused.value.message == (
            f"another install, upgrade or rollback is running on this depot ({tmp_path})"
        )
    assert not lock_held(tmp_path)


def test_releases_show_the_phase_and_prune_spares_both_ends(tmp_path: Path) -> None:
    for sequence, label in enumerate(["r1", "r2", "r3", "r4"], start=1):
        stage(tmp_path, label, sequence)
    install(tmp_path, "r1")
    install(tmp_path, "r2")
    save_phase(tmp_path, upgrade_phase("r4", "r2", "applying"))
    found, _ = list_releases(tmp_path)
    assert [(r.release, r.state) for r in found] == [
        ("r2", "current"),
        ("r1", "previous"),
        ("r4", "applying"),
        ("r3", "staged"),
    ]
    # r4 is the interrupted upgrade's target: it stays until that upgrade is settled.
    assert prune(tmp_path, 0, dry_run=True) == ["r3"]


def test_a_crash_after_the_commit_link_is_settled_as_committed(tmp_path: Path) -> None:
    """Killed between moving ``current`` (verify had passed) and recording the commit: the next
    run records it and changes no host."""
    stage(tmp_path, "r1", 1)
    stage(tmp_path, "r2", 2)
    install(tmp_path, "r1")
    save_phase(tmp_path, upgrade_phase("r2", "r1", "verifying"))
    (tmp_path / ".current.new").symlink_to("releases/r2")
    (tmp_path / ".current.new").replace(tmp_path / "current")
    notes: list[str] = []
    options = InstallOptions(bundle=tmp_path / "b", pubkey=tmp_path / "k", root=tmp_path)
    settle_interrupted(options, lambda _e: None, None, notes.append)
    phase = load_phase(tmp_path)
    assert phase is not None and phase.phase == "committed"
    assert notes == []
    record = StateRecord.load(tmp_path)
    assert record.previous == "r1"
    assert "installed" in record.releases["r2"]
    document = json.loads((tmp_path / PHASE_FILE).read_text())
    assert (document["target"], document["origin"]) == ("r2", "r1")


def test_the_outcome_decides_the_error_and_names_the_failure() -> None:
    checks = [Check("localhost", "runtime tiny-broken healthy", False, "connection refused")]
    held = UpgradeReport("upgrade", "rolled-back", "v3", "v2", "v2", "verify failed", None, checks)
    error = held.error()
    assert isinstance(error, UpgradeRolledBackError) and error.exit_code == 38
    assert error.message == (
        "upgrade to v3 failed: verify failed; every host was returned to v2, which verified: "
        "the rollback held"
    )
    assert [(p.path, p.message) for p in error.problems] == [
        ("localhost: runtime tiny-broken healthy", "connection refused")
    ]
    lost = UpgradeReport("upgrade", "rollback-failed", "v3", "v2", "v2", "boom", "bang")
    error = lost.error()
    assert isinstance(error, RollbackFailedError) and error.exit_code == 39
    assert error.message == "upgrade to v3 failed: boom; and returning to v2 FAILED too: bang"
    assert error.hint is not None and "appliance rollback --to v2" in error.hint
    assert UpgradeReport("upgrade", "committed", "v3", "v2", "v3").error() is None


def test_a_lock_probed_for_an_instant_does_not_refuse_a_run(tmp_path: Path) -> None:
    """`appliance releases` takes the lock for an instant to see whether a run holds it."""
    import threading

    held = threading.Event()

    def hold_briefly() -> None:
        with transition_lock(tmp_path):
            held.set()
            threading.Event().wait(0.3)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    held.wait(5)
    with transition_lock(tmp_path):  # waits out the 0.3 s holder instead of refusing
        pass
    holder.join()


def test_the_operators_key_wins_over_the_recorded_one(tmp_path: Path) -> None:
    """A publisher key rotated after a compromise: rollback --pubkey NEW checks with NEW."""
    from appliance.install.transition import release_key

    given = tmp_path / "new.pub"
    given.write_text("new key\n")
    record_staged(tmp_path, "v1", 1, "0" * 64, pubkey="ssh-ed25519 AAAA-the-old-one")
    with release_key(tmp_path, "v1", given) as key:
        assert key == given
    with release_key(tmp_path, "v1", None) as key:  # no key given: the recorded one
        assert key.read_text() == "ssh-ed25519 AAAA-the-old-one\n"
    record_installed(tmp_path, "v2", None)
    refused = pytest.raises(InstallError, match="keeps no publisher key for release v2")
    with refused, release_key(tmp_path, "v2", None):
        pass
