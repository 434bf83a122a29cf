"""Rotated files: shipped, then removed only once shipped, and the pruned log still verifies;
an anchor from before the pruning is checked against the shipped copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import AuditError
from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_retention import PRUNED, SHIPPED, prune, rotated, ship
from appliance.gateway.audit_verify import verify_log


def fill(directory: Path, start: int, count: int) -> AuditLog:
    log = AuditLog(directory, max_bytes=4096)
    log.open()
    for number in range(start, start + count):
        log.append({"request_id": f"req-{number}", "status": 200, "pad": "x" * 100})
    return log


def test_nothing_is_removed_before_it_is_shipped(tmp_path: Path) -> None:
    fill(tmp_path, 0, 120).close()
    before = rotated(tmp_path)
    assert len(before) >= 4
    assert prune(tmp_path, keep_rotated_bytes=0) == 0
    assert rotated(tmp_path) == before


def test_shipped_files_are_removed_oldest_first_and_the_log_still_verifies(
    tmp_path: Path,
) -> None:
    audit, shipped = tmp_path / "audit", tmp_path / "shipped"
    fill(audit, 0, 120).close()
    first_files = rotated(audit)
    anchor_seq = 3
    anchor = (anchor_seq, verify_and_hash(audit, anchor_seq))
    result = ship(audit, shipped)
    assert result["shipped"] == len(first_files)
    mark = json.loads((audit / SHIPPED).read_text())
    assert verify_log(shipped).last_seq == mark["seq"] == result["seq"]
    # More records after the shipping: their files are not shipped and stay.
    fill(audit, 120, 60).close()
    removed = prune(audit, keep_rotated_bytes=0)
    assert removed == len(first_files)
    assert all(not path.exists() for path in first_files)
    assert rotated(audit)  # the unshipped ones
    report = verify_log(audit)
    assert report.pruned_through == mark["seq"] == json.loads((audit / PRUNED).read_text())["seq"]
    assert report.last_seq == 179
    # An anchor from the removed part is checked where the records are now.
    with pytest.raises(AuditError, match="pruned"):
        verify_log(audit, (anchor,))
    assert verify_log(shipped, (anchor,)).records == mark["seq"] + 1
    # The gateway continues the pruned chain after a restart.
    fill(audit, 180, 1).close()
    assert verify_log(audit).last_seq == 180


def test_a_shipped_mark_that_does_not_match_the_log_removes_nothing(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    fill(audit, 0, 120).close()
    ship(audit, tmp_path / "shipped")
    mark = json.loads((audit / SHIPPED).read_text())
    (audit / SHIPPED).write_text(json.dumps({**mark, "hash": "0" * 64}))
    assert prune(audit, keep_rotated_bytes=0) == 0
    assert verify_log(audit).records == 120


def test_the_writer_prunes_after_rotation_once_shipped(tmp_path: Path) -> None:
    from appliance.gateway.audit_writer import AuditWriter

    audit = tmp_path / "audit"
    fill(audit, 0, 60).close()
    ship(audit, tmp_path / "shipped")
    log = AuditLog(audit, max_bytes=4096)
    log.open()
    writer = AuditWriter(log, keep_rotated_bytes=0)
    for number in range(60, 120):
        writer.submit({"request_id": f"req-{number}", "pad": "x" * 100}).result(timeout=10)
    writer.close()
    report = verify_log(audit)
    assert report.pruned_through is not None and report.last_seq == 119


def verify_and_hash(directory: Path, seq: int) -> str:
    for path in [*rotated(directory), directory / "audit.jsonl"]:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["seq"] == seq:
                return str(record["hash"])
    raise AssertionError(seq)
