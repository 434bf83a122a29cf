"""The audit chain: what verify accepts, what it catches and where, across rotation and
restarts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from appliance.errors import AuditError
from appliance.gateway.audit import HEAD, ZERO_HASH, AuditLog, record_hash
from appliance.gateway.audit_head import head_block, head_check
from appliance.gateway.audit_verify import find_record, last_records, verify_log
from appliance.gateway.audit_writer import AuditWriter


def fields(number: int) -> dict[str, object]:
    return {
        "time": f"2026-11-27T00:00:{number % 60:02d}.000Z",
        "request_id": f"req-{number}",
        "key_id": "k-0000abcd",
        "model": "tiny-llama",
        "status": 200,
        "prompt": "é ✓",  # non-ASCII survives canonical JSON
    }


def write(directory: Path, count: int, max_bytes: int = 1 << 20) -> AuditLog:
    log = AuditLog(directory, max_bytes=max_bytes)
    log.open()
    for number in range(count):
        log.append(fields(number))
    log.close()
    return log


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def failure(directory: Path) -> tuple[str, str, int | None, str]:
    with pytest.raises(AuditError) as caught:
        verify_log(directory)
    problem = caught.value.problems[0]
    return caught.value.message.rsplit(": ", 1)[1], problem.path, problem.line, problem.message


def test_records_chain_from_zero_and_verify(tmp_path: Path) -> None:
    write(tmp_path, 5)
    records = [json.loads(line) for line in lines(tmp_path / "audit.jsonl")]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev"] == ZERO_HASH
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    assert all(record_hash(r) == r["hash"] for r in records)
    report = verify_log(tmp_path)
    assert (report.records, report.files, report.last_seq) == (5, 1, 4)
    assert (report.first_time, report.last_time) == (fields(0)["time"], fields(4)["time"])
    head = json.loads((tmp_path / HEAD).read_text())
    check = head.pop("check")  # the head's own digest (test_audit_head_check.py)
    assert head == {"seq": 4, "hash": records[-1]["hash"], "file": "audit.jsonl"}
    assert check == head_check(head)


def test_modified_record_is_found_at_its_line(tmp_path: Path) -> None:
    write(tmp_path, 5)
    path = tmp_path / "audit.jsonl"
    text = lines(path)
    text[2] = text[2].replace('"status":200', '"status":201')
    path.write_text("".join(text))
    kind, where, line, what = failure(tmp_path)
    assert (kind, where, line) == ("modified", "audit.jsonl", 3)
    assert "does not match its hash" in what


def test_modified_record_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    write(tmp_path, 5)
    path = tmp_path / "audit.jsonl"
    text = lines(path)
    record = json.loads(text[1])
    record["model"] = "other"
    record["hash"] = record_hash(record)
    text[1] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(text))
    kind, _, line, what = failure(tmp_path)
    assert (kind, line) == ("modified", 3)
    assert "prev does not match" in what


def test_removed_record(tmp_path: Path) -> None:
    write(tmp_path, 5)
    path = tmp_path / "audit.jsonl"
    text = lines(path)
    del text[2]
    path.write_text("".join(text))
    kind, _, line, what = failure(tmp_path)
    assert (kind, line) == ("removed", 3)
    assert what == "seq jumps from 1 to 3: 1 record(s) missing"


def test_reordered_records(tmp_path: Path) -> None:
    write(tmp_path, 5)
    path = tmp_path / "audit.jsonl"
    text = lines(path)
    text[1], text[3] = text[3], text[1]
    path.write_text("".join(text))
    kind, _, line, what = failure(tmp_path)
    assert (kind, line) == ("reordered", 2)
    assert what == "seq 3 where seq 1 belongs (seq 1 is at audit.jsonl:4)"


def test_truncated_tail_is_caught_by_the_head(tmp_path: Path) -> None:
    write(tmp_path, 5)
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(lines(path)[:3]))
    kind, where, line, what = failure(tmp_path)
    assert (kind, where, line) == ("truncated", HEAD, None)
    assert what == "the head names seq 4 but the log ends at seq 2: 2 record(s) cut off the end"


def test_cut_off_last_line(tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(path.read_bytes()[:-10])
    kind, _, line, _ = failure(tmp_path)
    assert (kind, line) == ("truncated", 3)


def test_missing_head_with_records(tmp_path: Path) -> None:
    write(tmp_path, 2)
    (tmp_path / HEAD).unlink()
    assert failure(tmp_path)[:2] == ("truncated", HEAD)


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    write(tmp_path, 80, max_bytes=4096)
    rotated = sorted(p.name for p in tmp_path.glob("audit-*.jsonl"))
    assert len(rotated) >= 3
    assert rotated[0] == "audit-000000000000.jsonl"
    report = verify_log(tmp_path)
    assert (report.records, report.files, report.last_seq) == (80, len(rotated) + 1, 79)
    # Each file starts where its name says and links to the previous file's last record.
    second = tmp_path / rotated[1]
    first_of_second = json.loads(lines(second)[0])
    last_of_first = json.loads(lines(tmp_path / rotated[0])[-1])
    assert second.name == f"audit-{first_of_second['seq']:012d}.jsonl"
    assert first_of_second["prev"] == last_of_first["hash"]
    # Removing a whole rotated file is a removal, seen where the next file starts.
    third_starts = json.loads(lines(tmp_path / rotated[2])[0])["seq"]
    second.unlink()
    kind, where, line, what = failure(tmp_path)
    assert (kind, where, line) == ("removed", rotated[2], 1)
    assert what.startswith(f"seq jumps from {last_of_first['seq']} to {third_starts}: ")


def test_resume_after_restart_continues_seq_and_prev(tmp_path: Path) -> None:
    write(tmp_path, 3)
    log = write(tmp_path, 2)
    assert log.seq == 5
    records = [json.loads(line) for line in lines(tmp_path / "audit.jsonl")]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert verify_log(tmp_path).records == 5


def test_resume_across_a_rotation(tmp_path: Path) -> None:
    write(tmp_path, 30, max_bytes=4096)
    (tmp_path / "audit.jsonl").unlink(missing_ok=True)  # rotated just before the stop
    head = json.loads((tmp_path / HEAD).read_text())
    if head["file"] == "audit.jsonl":  # put the last record into a rotated-only state
        pytest.skip("the last write did not rotate")
    write(tmp_path, 1, max_bytes=4096)
    assert verify_log(tmp_path).records == 31


def test_refuses_to_continue_a_cut_off_log(tmp_path: Path) -> None:
    write(tmp_path, 4)
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(lines(path)[:2]))
    with pytest.raises(AuditError, match="records were cut off"):
        AuditLog(tmp_path).open()


def test_refuses_to_continue_a_modified_tail(tmp_path: Path) -> None:
    write(tmp_path, 2)
    path = tmp_path / "audit.jsonl"
    path.write_text(path.read_text().replace('"status":200', '"status":500'))
    with pytest.raises(AuditError, match="does not match its hash"):
        AuditLog(tmp_path).open()


def test_a_head_behind_the_log_is_brought_forward(tmp_path: Path) -> None:
    """The gateway stopped between writing records and replacing the head."""
    write(tmp_path, 2)
    stale = (tmp_path / HEAD).read_text()
    write(tmp_path, 2)
    (tmp_path / HEAD).write_text(stale)
    assert verify_log(tmp_path).beyond_head == 2
    write(tmp_path, 1)
    report = verify_log(tmp_path)
    assert (report.records, report.beyond_head) == (5, 0)


def test_writer_thread_serializes_and_batches(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.open()
    writer = AuditWriter(log)
    futures = [writer.submit(fields(n)) for n in range(200)]
    seqs = [future.result(timeout=10)["seq"] for future in futures]
    writer.close()
    assert seqs == list(range(200))
    assert verify_log(tmp_path).records == 200


def test_find_and_show(tmp_path: Path) -> None:
    write(tmp_path, 30, max_bytes=4096)
    record = find_record(tmp_path, "req-3")
    assert record is not None and record["seq"] == 3
    assert find_record(tmp_path, "req-missing") is None
    assert [r["seq"] for r in last_records(tmp_path, 3)] == [27, 28, 29]


def rewrite_from(directory: Path, seq: int, change: dict[str, object]) -> None:
    """What someone with write access and no anchor does: edit a record, recompute every hash
    from there on, and rewrite the head."""
    path = directory / "audit.jsonl"
    records = [json.loads(line) for line in lines(path)]
    prev = records[seq - 1]["hash"] if seq else ZERO_HASH
    for record in records[seq:]:
        record.update(change)
        record["prev"] = prev
        record.pop("hash")
        record["hash"] = prev = record_hash(record)
    path.write_text(
        "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
    )
    (directory / HEAD).write_text(
        json.dumps({"seq": records[-1]["seq"], "hash": prev, "file": "audit.jsonl"})
    )


def test_a_head_naming_an_earlier_record_is_checked_too(tmp_path: Path) -> None:
    write(tmp_path, 5)
    # A head behind the log, with a hash that is not seq 2's, its check recomputed (the check
    # shows a torn copy, not an edit: anyone can recompute it).
    (tmp_path / HEAD).write_bytes(head_block(2, "f" * 64, "audit.jsonl"))
    assert failure(tmp_path)[0] == "modified"
    assert failure(tmp_path)[3] == "the head's hash for seq 2 is not that record's hash"


def test_a_rewritten_chain_passes_alone_and_fails_against_an_anchor(tmp_path: Path) -> None:
    write(tmp_path, 6)
    anchor = (3, json.loads(lines(tmp_path / "audit.jsonl")[3])["hash"])
    assert verify_log(tmp_path, (anchor,)).records == 6
    rewrite_from(tmp_path, 2, {"status": 500})
    assert verify_log(tmp_path).records == 6  # without an anchor the rewrite is consistent
    with pytest.raises(AuditError) as caught:
        verify_log(tmp_path, (anchor,))
    assert "modified" in caught.value.message
    assert "the anchor kept off the box says" in caught.value.problems[0].message
    with pytest.raises(AuditError, match="truncated"):
        verify_log(tmp_path, ((99, "0" * 64),))
