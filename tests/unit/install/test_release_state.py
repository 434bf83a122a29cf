"""The depot's release record and what reads it: list and prune, on real directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.install.release_state import (
    STATE_FILE,
    StateRecord,
    list_releases,
    prune,
    record_failed,
)
from tests.fixtures.releases import install, stage


def states(root: Path) -> list[tuple[str, str]]:
    found, warning = list_releases(root)
    assert warning is None
    return [(r.release, r.state) for r in found]


def test_states_follow_installs_and_failures(tmp_path: Path) -> None:
    for sequence, label in enumerate(["r1", "r2", "r3", "r4"], start=1):
        stage(tmp_path, label, sequence)
    install(tmp_path, "r1")
    install(tmp_path, "r2")
    install(tmp_path, "r3")
    record_failed(tmp_path, "r4", "gpu-1 failed at task 'Start the runtime': boom")
    assert states(tmp_path) == [
        ("r3", "current"),
        ("r2", "previous"),
        ("r4", "failed"),
        ("r1", "superseded"),
    ]
    failed = next(r for r in list_releases(tmp_path)[0] if r.release == "r4")
    assert failed.error == "gpu-1 failed at task 'Start the runtime': boom"
    # Installing the current release again changes nothing about previous.
    install(tmp_path, "r3")
    assert states(tmp_path)[:2] == [("r3", "current"), ("r2", "previous")]
    # A failed release installed later is no longer failed.
    install(tmp_path, "r4")
    assert states(tmp_path)[:2] == [("r4", "current"), ("r3", "previous")]


def test_the_record_is_replaced_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    stage(tmp_path, "r1", 1)
    before = (tmp_path / STATE_FILE).stat().st_ino
    install(tmp_path, "r1")
    assert (tmp_path / STATE_FILE).stat().st_ino != before  # a new file, renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "releases", STATE_FILE]
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert document["schema"] == 1
    assert document["releases"]["r1"]["sequence"] == 1


@pytest.mark.parametrize(
    "content",
    [b'{"schema": 1, "previous": "r1", "rel', b"", b"[1, 2]", b'{"schema": 9}'],
    ids=["torn", "empty", "not-a-record", "unknown-schema"],
)
def test_an_unreadable_record_counts_as_empty_and_is_rewritten(
    tmp_path: Path, content: bytes
) -> None:
    stage(tmp_path, "r1", 1)
    stage(tmp_path, "r2", 2)
    install(tmp_path, "r1")
    (tmp_path / STATE_FILE).write_bytes(content)
    found, warning = list_releases(tmp_path)
    assert warning is not None and str(tmp_path / STATE_FILE) in warning
    # The link still says what is current; the sequence comes from each staged manifest.
    assert [(r.release, r.state, r.sequence) for r in found] == [
        ("r1", "current", 1),
        ("r2", "staged", 2),
    ]
    install(tmp_path, "r2")
    assert states(tmp_path) == [("r2", "current"), ("r1", "previous")]


def test_a_failed_write_keeps_the_old_record(tmp_path: Path) -> None:
    stage(tmp_path, "r1", 1)
    old = (tmp_path / STATE_FILE).read_bytes()
    record = StateRecord.load(tmp_path)
    record.releases["r1"]["unserialisable"] = object()
    with pytest.raises(TypeError):
        record.save(tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_prune_keeps_current_previous_and_the_newest_others(tmp_path: Path) -> None:
    for sequence in range(1, 7):
        stage(tmp_path, f"r{sequence}", sequence)
    for label in ["r1", "r2", "r3", "r4", "r5"]:
        install(tmp_path, label)
    # r6 staged only; r5 current, r4 previous.
    assert prune(tmp_path, 2, dry_run=True) == ["r3", "r2", "r1"]
    assert len(list_releases(tmp_path)[0]) == 6  # a dry run removes nothing
    assert prune(tmp_path, 2) == ["r3", "r2", "r1"]
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == [
        "r4",
        "r4.ansible",
        "r5",
        "r5.ansible",
        "r6",
        "r6.ansible",
    ]
    assert sorted(json.loads((tmp_path / STATE_FILE).read_text())["releases"]) == [
        "r4",
        "r5",
        "r6",
    ]
    # Never current, never previous, whatever --keep says.
    assert prune(tmp_path, 0) == ["r6"]
    assert states(tmp_path) == [("r5", "current"), ("r4", "previous")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".prune")] == []
