"""``verify_shipped``: a shipped copy passes as written and fails when a record is altered,
missing, cut off the end or replaced; duplicates of the same record are passed over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import AuditError
from appliance.gateway.audit import AuditLog, record_hash
from appliance.gateway.audit_retention import prune, rotated, write_mark
from appliance.gateway.audit_shipped import verify_shipped
from appliance.gateway.forward import FileSink, Forwarder, cursor_name
from appliance.gateway.syslog import format_message, frame, parse_message
from tests.fixtures.hostile import examples


@pytest.fixture
def copy(tmp_path: Path) -> list[bytes]:
    """The lines of a shipped copy of 12 records (two batches, so two heads)."""
    log = AuditLog(tmp_path / "audit")
    log.open()
    forwarder = Forwarder(tmp_path / "audit", "file", FileSink(tmp_path / "copy.log"), "gw1")
    for batch in range(2):
        for number in range(6):
            log.append({"event": "call", "request_id": f"r{batch}-{number}", "status": 200})
        forwarder.step()
    log.close()
    return (tmp_path / "copy.log").read_bytes().splitlines(keepends=True)


def check(tmp_path: Path, lines: list[bytes]) -> int:
    (tmp_path / "edited.log").write_bytes(b"".join(lines))
    return verify_shipped(tmp_path / "edited.log").records


def test_the_copy_as_written_verifies_among_other_programs_lines(
    tmp_path: Path, copy: list[bytes]
) -> None:
    other = [
        b"<13>1 2026-12-01T10:00:00Z gw1 sshd - - - Accepted publickey\n",
        b"Dec  1 10:00:00 gw1 kernel: traditional format\n",
    ]
    (tmp_path / "mixed.log").write_bytes(
        other[0] + b"".join(copy[:6]) + other[1] + b"".join(copy[6:])
    )
    report = verify_shipped(tmp_path / "mixed.log")
    assert (report.records, report.first_seq, report.last_seq, report.other_lines) == (12, 0, 11, 2)
    assert report.host == "gw1" and report.head_seq == 11


def test_a_record_sent_twice_is_passed_over(tmp_path: Path, copy: list[bytes]) -> None:
    (tmp_path / "twice.log").write_bytes(b"".join(copy[:8] + copy[5:]))
    report = verify_shipped(tmp_path / "twice.log")
    assert (report.records, report.duplicates) == (12, 3)


def _edit(line: bytes, rehash: bool = False, **changes: object) -> bytes:
    message = parse_message(line)
    assert message is not None
    record = {**json.loads(message.msg), **changes}
    if rehash:
        record["hash"] = record_hash(record)
    return line.replace(message.msg, json.dumps(record).encode())


@pytest.mark.parametrize(
    ("edit", "kind"),
    [
        (lambda lines: [*lines[:3], _edit(lines[3], status=500), *lines[4:]], "modified"),
        (lambda lines: [*lines[:3], *lines[4:]], "removed"),
        (lambda lines: lines[:10], "truncated"),
        (lambda lines: [*lines[:4], *lines[5:], lines[3]], "removed"),
        (lambda lines: [*lines, _edit(lines[11], rehash=True, status=500)], "repeated"),
        (lambda lines: [*lines[:3], _edit(lines[3], rehash=True, seq="3"), *lines[4:]], "modified"),
        (lambda lines: [line.replace(b" gw1 ", b" gw2 ", 1) for line in lines[:0]], "empty"),
    ],
    ids=["altered", "missing", "cut-off-end", "moved", "replaced-duplicate", "seq-text", "empty"],
)
def test_an_edited_copy_fails(tmp_path: Path, copy: list[bytes], edit: object, kind: str) -> None:
    with pytest.raises(AuditError, match=f"fails verification: {kind}"):
        check(tmp_path, edit(copy))  # type: ignore[operator]


def test_records_rehashed_after_an_edit_still_fail_on_the_chain(
    tmp_path: Path, copy: list[bytes]
) -> None:
    message = parse_message(copy[3])
    assert message is not None
    record = {**json.loads(message.msg), "status": 500}
    record["hash"] = record_hash(record)
    forged = format_message(record, (11, "f" * 64), "gw1")
    with pytest.raises(AuditError, match="modified"):
        check(tmp_path, [*copy[:3], forged + b"\n", *copy[4:]])


def test_a_message_is_one_frame_and_parses_back() -> None:
    record = {"seq": 3, "prev": "0" * 64, "hash": "a" * 64, "time": "2026-12-01T10:00:00.000Z"}
    message = format_message(record, (3, "a" * 64), "gw 1\n")
    assert message.startswith(b"<110>1 2026-12-01T10:00:00.000Z gw_1_ appliance-gateway - call ")
    assert frame(message) == b"%d %s" % (len(message), message)
    parsed = parse_message(message)
    assert parsed is not None and json.loads(parsed.msg) == record
    assert parsed.data["audit@32473"] == {"seq": "3", "head-seq": "3", "head-hash": "a" * 64}


def test_pruning_waits_for_every_forwarder(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=4096)
    log.open()
    for number in range(60):
        log.append({"request_id": f"r{number}", "pad": "x" * 100})
    log.close()
    names = [cursor_name("syslog"), cursor_name("file")]
    before = rotated(tmp_path)
    assert prune(tmp_path, 0, names) == 0  # no forwarder has started
    second_file_end = json.loads(before[1].read_bytes().splitlines()[-1])
    write_mark(tmp_path / names[0], second_file_end["seq"], second_file_end["hash"])
    assert prune(tmp_path, 0, names) == 0  # the file target has nothing yet
    write_mark(tmp_path / names[1], second_file_end["seq"] + 1, "0" * 64)
    assert prune(tmp_path, 0, names) == 0  # a cursor that names no record of this log
    last = json.loads((tmp_path / "audit.head").read_bytes())
    write_mark(tmp_path / names[1], last["seq"], last["hash"])
    assert prune(tmp_path, 0, names) == 2  # through the oldest cursor, no further
    assert rotated(tmp_path) == before[2:]


def test_a_record_too_long_for_a_message_keeps_the_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit")
    log.open()
    for value in ("a", "x" * 5000, "b"):
        log.append({"event": "call", "model": value})
    log.close()
    sink = FileSink(tmp_path / "copy.log")
    Forwarder(tmp_path / "audit", "file", sink, "gw1", max_message_bytes=4096).step()
    report = verify_shipped(tmp_path / "copy.log")
    assert (report.records, report.omitted) == (3, [1])
    lines = (tmp_path / "copy.log").read_bytes().splitlines(keepends=True)
    message = parse_message(lines[1])
    assert message is not None and set(json.loads(message.msg)) == {"seq", "prev", "hash", "event"}
    # Its links are still checked: a placeholder with another hash breaks the next record's prev.
    with pytest.raises(AuditError, match="modified"):
        check(tmp_path, [lines[0], _edit(lines[1], hash="f" * 64), lines[2]])


@examples(300)
@given(
    line=st.integers(min_value=0, max_value=11),
    at=st.floats(min_value=0, max_value=1),
    junk=st.binary(max_size=300),
    insert=st.booleans(),
)
def test_whatever_a_collector_file_holds_verify_passes_or_names_a_problem(
    tmp_path: Path, copy: list[bytes], line: int, at: float, junk: bytes, insert: bool
) -> None:
    """A damaged or hostile line never crashes verify: bytes overwritten anywhere in a message
    (its header, structured data or JSON), or a line of junk added, is passed over as another
    program's line or named as the problem. Only the first record can go unnoticed, and the
    report then shows the copy starting at seq 1."""
    junk = junk.replace(b"\n", b" ")
    lines = list(copy)
    if insert:
        lines.insert(line, copy[line][: int(at * len(copy[line]))] + junk + b"\n")
    else:
        target = lines[line].rstrip(b"\n")
        where = int(at * len(target))
        lines[line] = target[:where] + junk + target[where + len(junk) :] + b"\n"
    (tmp_path / "edited.log").write_bytes(b"".join(lines))
    try:
        report = verify_shipped(tmp_path / "edited.log")
    except AuditError as error:
        assert "fails verification" in error.message
    else:
        # A copy may start after seq 0 (forwarding began later): the report says where.
        assert (report.first_seq, report.records) in {(0, 12), (1, 11)}
        assert report.first_seq == 0 or (line == 0 and not insert)
