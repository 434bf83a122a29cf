"""``appliance rollback``'s refusals, which change nothing, on a real depot layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.install.hosts_record import remember
from appliance.install.upgrade_state import PHASE_FILE, transition_lock
from tests.fixtures.cli import run_cli
from tests.fixtures.releases import install, stage

EGRESS = ("--egress-target", "http://198.19.255.10/")


def rollback(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, "rollback", "--root", str(root), *EGRESS, *argv)
    assert out == ""
    return code, err


def test_refusals_name_the_release_and_change_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert rollback(capsys, tmp_path) == (
        31,
        f"Error: nothing is installed under {tmp_path}\nHint: install a release first\n",
    )
    stage(tmp_path, "r1", 1)
    install(tmp_path, "r1")
    code, err = rollback(capsys, tmp_path)
    assert code == 31
    assert err.startswith(f"Error: {tmp_path}/releases.json names no previous release")
    assert "Hint: name the release with --to" in err
    stage(tmp_path, "r2", 2)
    install(tmp_path, "r2")
    assert rollback(capsys, tmp_path, "--to", "r2")[1].startswith(
        "Error: release r2 is already current"
    )
    code, err = rollback(capsys, tmp_path, "--to", "r0")
    assert code == 31
    assert err == (
        "Error: release r0 is not on this depot any more (pruned, or never staged here)\n"
        "Hint: carry release r0's bundle to the depot and install it with --allow-downgrade; "
        "nothing was changed\n"
    )
    # A release is a directory name: --to never names a path (.. would be the root itself,
    # a directory, and the rollback would go on to record it as its target).
    (tmp_path / "k").write_text("")
    for label in ("..", "../releases/r1", "r1/", "r1\n"):
        code, err = rollback(capsys, tmp_path, "--to", label, "--pubkey", str(tmp_path / "k"))
        assert (code, err.splitlines()[0]) == (31, f"Error: {label!r} is not a release label")
        assert not (tmp_path / PHASE_FILE).exists()
    with transition_lock(tmp_path):
        code, err = rollback(capsys, tmp_path)
    assert code == 31
    assert "another install, upgrade or rollback is running on this depot" in err
    assert (tmp_path / "current").readlink() == Path("releases/r2")
    assert not (tmp_path / PHASE_FILE).exists()


def test_egress_target_is_required(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "rollback", "--root", str(tmp_path))
    assert code == 2
    assert "Missing option '--egress-target'" in err


def test_a_depot_whose_inventory_is_gone_refuses_to_guess_its_hosts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Installed with an inventory of a depot and nodes: rolling back this machine alone would
    # leave the nodes on the release it leaves.
    stage(tmp_path, "r1", 1)
    install(tmp_path, "r1")
    stage(tmp_path, "r2", 2)
    install(tmp_path, "r2")
    inventory = tmp_path / "lab.yml"
    remember(tmp_path, inventory, ("198.18.53.0/24",))
    code, err = rollback(capsys, tmp_path)
    assert (code, err) == (
        31,
        f"Error: this depot's hosts were installed with the inventory {inventory}, which is "
        "gone\nHint: pass that inventory again with --inventory FILE (and --internal-cidr as "
        "given to install); nothing was changed\n",
    )
    assert (tmp_path / "current").readlink() == Path("releases/r2")
    assert not (tmp_path / PHASE_FILE).exists()
