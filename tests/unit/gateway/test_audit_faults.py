"""Faults the audit log meets for real and heals from: a torn last line after a crash, the
log file removed or renamed under the writer, a record that cannot be serialised, a full
disk (a real file-size limit: the kernel cuts the write) and no file descriptors left (a real
RLIMIT_NOFILE). After each, ``verify_log`` passes and the chain never restarts at seq 0."""

from __future__ import annotations

import json
import resource
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import AuditError
from appliance.gateway.audit import CURRENT, HEAD, AuditLog
from appliance.gateway.audit_verify import verify_log
from appliance.gateway.audit_writer import AuditWriter


def fields(number: int) -> dict[str, object]:
    return {"time": "2026-12-01T00:00:00.000Z", "request_id": f"req-{number}", "status": 200}


def opened(directory: Path, count: int = 0) -> AuditLog:
    log = AuditLog(directory, max_bytes=1 << 20)
    log.open()
    for number in range(count):
        log.append(fields(number))
    return log


def records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / CURRENT).read_bytes().splitlines()]


def test_a_torn_last_line_is_sealed_by_a_repair_record(tmp_path: Path) -> None:
    opened(tmp_path, 3).close()
    current = tmp_path / CURRENT
    whole = current.read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    current.write_bytes(whole[:-10])  # a crash in the middle of writing seq 2
    with pytest.raises(AuditError, match="truncated"):
        verify_log(tmp_path)
    log = opened(tmp_path)
    log.append(fields(9))
    log.close()
    report = verify_log(tmp_path)
    assert report.records == 4
    repair, after = records(tmp_path)[2:]
    assert (repair["seq"], repair["event"]) == (2, "audit_repair")
    assert repair["torn_bytes"] == len(last) - 10
    # The head named the torn record: the repair record keeps what it said.
    assert repair["lost_head"]["seq"] == 2
    torn = tmp_path / str(repair["saved_as"])
    assert torn.read_bytes() == last[:-10]
    assert after["seq"] == 3 and after["request_id"] == "req-9"


def test_a_torn_line_does_not_excuse_records_cut_off_before_it(tmp_path: Path) -> None:
    opened(tmp_path, 4).close()
    current = tmp_path / CURRENT
    lines = current.read_bytes().splitlines(keepends=True)
    current.write_bytes(b"".join(lines[:2]) + lines[2][:20])  # head says 3: seq 3 is gone too
    with pytest.raises(AuditError, match="records were cut off"):
        opened(tmp_path)


@pytest.mark.parametrize("how", ["removed", "renamed"])
def test_the_log_file_vanishing_under_the_writer_is_recorded_as_a_gap(
    tmp_path: Path, how: str
) -> None:
    log = opened(tmp_path, 3)
    anchor = (1, records(tmp_path)[1]["hash"])
    if how == "removed":
        (tmp_path / CURRENT).unlink()
    else:
        (tmp_path / CURRENT).rename(tmp_path / "elsewhere.jsonl")
    log.append(fields(3))
    log.close()
    gap, after = records(tmp_path)
    assert (gap["event"], gap["seq"], gap["first_seq"], gap["last_seq"]) == ("audit_gap", 3, 0, 2)
    assert after["seq"] == 4 and after["prev"] == gap["hash"]
    report = verify_log(tmp_path)
    assert [(g["first_seq"], g["last_seq"]) for g in report.gaps] == [(0, 2)]
    assert report.records == 2 and report.last_seq == 4
    # A gap cannot hide records whose hash was kept off the box.
    with pytest.raises(AuditError, match="modified"):
        verify_log(tmp_path, (anchor,))


def test_a_gap_record_that_does_not_fit_the_jump_is_a_removal(tmp_path: Path) -> None:
    log = opened(tmp_path, 3)
    (tmp_path / CURRENT).unlink()
    log.append(fields(3))
    log.close()
    text = (tmp_path / CURRENT).read_text().replace('"first_seq":0', '"first_seq":1')
    (tmp_path / CURRENT).write_text(text)
    with pytest.raises(AuditError):
        verify_log(tmp_path)


def test_an_unserialisable_record_is_replaced_and_the_rest_written(tmp_path: Path) -> None:
    log = opened(tmp_path)
    written = log.append_many([fields(0), {"request_id": "bad", "x": {1, 2}}, fields(2)])
    log.close()
    assert [r.get("event") for r in written] == [None, "unrecordable", None]
    assert written[1]["request_id"] == "bad" and "TypeError" in written[1]["error"]
    assert verify_log(tmp_path).records == 3


@contextmanager
def limit(kind: int, soft: int) -> Iterator[None]:
    old = resource.getrlimit(kind)
    resource.setrlimit(kind, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(kind, old)


def wait_until_healed(writer: AuditWriter) -> float:
    started = time.monotonic()
    while writer.failed is not None:
        assert time.monotonic() - started < 10, f"still failed: {writer.failed}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_full_disk_fails_calls_while_it_lasts_and_heals_with_an_outage_record(
    tmp_path: Path,
) -> None:
    log = opened(tmp_path, 20)
    writer = AuditWriter(log, retry_s=0.1)
    size = (tmp_path / CURRENT).stat().st_size
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    try:
        with limit(resource.RLIMIT_FSIZE, size + 30):  # room for part of one record only
            with pytest.raises(OSError):
                writer.submit(fields(20)).result(timeout=10)
            assert writer.failed is not None
            # Nothing of the failed write stays: the file is whole lines only.
            assert (tmp_path / CURRENT).read_bytes().endswith(b"\n")
            assert (tmp_path / CURRENT).stat().st_size == size
            writer.unrecorded()  # the gateway answered that call 503
    finally:
        signal.signal(signal.SIGXFSZ, previous)
    wait_until_healed(writer)
    record = writer.submit(fields(21)).result(timeout=10)
    writer.close()
    outage = records(tmp_path)[20]
    assert (outage["event"], outage["seq"], outage["unrecorded_answers"]) == ("audit_outage", 20, 1)
    assert "short write" in outage["error"]  # the kernel wrote what fitted, then refused
    assert record["seq"] == 21
    assert verify_log(tmp_path).records == 22


def test_no_file_descriptors_left_heals_by_itself(tmp_path: Path) -> None:
    log = opened(tmp_path, 2)
    writer = AuditWriter(log, retry_s=0.1)
    holders = []
    # The writer keeps the head open and rewrites it in place: a batch needs a descriptor of
    # its own when the head must be created again, as after someone removed it.
    (tmp_path / HEAD).unlink()
    try:
        with limit(resource.RLIMIT_NOFILE, 64):
            try:  # use up every descriptor left, as a flood of clients would
                while True:
                    holders.append((tmp_path / CURRENT).open("rb"))
            except OSError:
                pass
            with pytest.raises(OSError, match="Too many open files"):
                writer.submit(fields(2)).result(timeout=10)
            assert writer.failed is not None
            for handle in holders:
                handle.close()
            holders.clear()
            assert wait_until_healed(writer) < 2
    finally:
        for handle in holders:
            handle.close()
    writer.submit(fields(3)).result(timeout=10)
    writer.close()
    kinds = [r.get("event") for r in records(tmp_path)]
    assert kinds == [None, None, "audit_outage", None]
    assert verify_log(tmp_path).records == 4
