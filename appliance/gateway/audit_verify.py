"""Checking an audit directory end to end, and finding records in it.

``verify_log`` walks every file oldest first, recomputes each record's hash, and checks that
``seq`` counts up by one and ``prev`` names the record before, across file boundaries; then that
the head names the last record. It stops at the first problem and says where (file:line) and
what it looks like: modified, removed, reordered or truncated.

Event records the gateway writes itself pass like any other record: ``audit_repair`` (a torn
last line sealed at start), ``audit_outage`` (the log could not be written for a while; it
counts the 503 answers given meanwhile) and ``audit_gap``. A gap record is the one place where
``seq`` may jump: ``audit.jsonl`` was removed or renamed under the running gateway, and the
record names exactly the seqs that file held and the hash of its last record (its own
``prev``). Verify passes over it and lists it in the report (``gaps``); an anchor inside a gap
still fails, so a gap cannot hide records whose hash was kept off the box.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import AuditError, Problem
from appliance.gateway.audit import CURRENT, HEAD, ZERO_HASH, log_files, record_hash
from appliance.gateway.audit_head import read_head_checked
from appliance.gateway.audit_retention import PRUNED, read_mark
from appliance.gateway.record import CLIENT_ID_LIMIT, clean


@dataclass(frozen=True)
class VerifyReport:
    directory: Path
    records: int
    files: int
    first_time: str | None
    last_time: str | None
    last_seq: int
    last_hash: str
    beyond_head: int  # records written after the head was read (a live gateway)
    gaps: tuple[dict[str, Any], ...] = ()
    pruned_through: int | None = None  # records up to this seq were shipped and removed here
    # appliance-audit-forward's cursors: target -> the last seq it delivered.
    forwarded: dict[str, int] = field(default_factory=dict)
    # Whether audit.head carried its own check (False: an earlier release wrote it, accepted
    # unchecked; None: no head, an empty log).
    head_checked: bool | None = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "dir": str(self.directory),
            "records": self.records,
            "files": self.files,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "beyond_head": self.beyond_head,
            "gaps": list(self.gaps),
            "pruned_through": self.pruned_through,
            "forwarded": self.forwarded,
            "head_checked": self.head_checked,
        }


def _fail(directory: Path, kind: str, path: Path | str, line: int | None, what: str) -> AuditError:
    name = path.name if isinstance(path, Path) else path
    return AuditError(
        f"audit log {directory} fails verification: {kind}",
        hint="keep this directory as evidence; the problem is at the place named above",
        problems=[Problem(path=name, line=line, message=what)],
    )


def _lines(files: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for path in files:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                yield path, number, line


def _where_is(files: list[Path], seq: int) -> str | None:
    """file:line holding ``seq``, to tell a reordered record from a removed one."""
    for path, number, line in _lines(files):
        try:
            if json.loads(line).get("seq") == seq:
                return f"{path.name}:{number}"
        except (ValueError, AttributeError):
            continue
    return None


@dataclass
class _Chain:
    """What the walk over the log has established so far."""

    expected: int = 0  # the seq the next record must have
    prev: str = ZERO_HASH  # the hash the next record must name as prev
    records: int = 0
    first_time: str | None = None
    last_time: str | None = None
    # The hashes of the records the head file and the anchors name, as found in the log.
    seen: dict[int, str] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    pruned: int | None = None  # the last seq removed (audit.pruned)


def _is_gap(record: dict[str, Any], expected: int) -> bool:
    """A well-formed gap record for the seqs from ``expected`` up to the one before it."""
    first, last, seq = record.get("first_seq"), record.get("last_seq"), record.get("seq")
    return (
        record.get("event") == "audit_gap"
        and first == expected
        and isinstance(last, int)
        and isinstance(seq, int)
        and last >= expected
        and seq == last + 1
        and record.get("prev") == record.get("last_hash")
    )


def _parse(
    directory: Path, path: Path, number: int, line: bytes
) -> tuple[dict[str, Any], str, Any]:
    """The record on one line, the hash it states and its seq (as written: checked later)."""
    if not line.endswith(b"\n"):
        raise _fail(directory, "truncated", path, number, "the last line is cut off")
    try:
        record = json.loads(line)
        stated = record["hash"]
        seq = record["seq"]
    except (ValueError, KeyError, TypeError):
        raise _fail(directory, "modified", path, number, "not a JSON audit record") from None
    return record, stated, seq


def _check_sequence(
    directory: Path, files: list[Path], path: Path, number: int, seq: Any, expected: int
) -> None:
    """``seq`` must be ``expected``; else say whether records were removed or reordered."""
    if seq == expected:
        return
    if isinstance(seq, int) and seq > expected:
        found = _where_is(files, expected)
        if found:
            raise _fail(
                directory,
                "reordered",
                path,
                number,
                f"seq {seq} where seq {expected} belongs (seq {expected} is at {found})",
            )
        raise _fail(
            directory,
            "removed",
            path,
            number,
            f"seq jumps from {expected - 1} to {seq}: {seq - expected} record(s) missing",
        )
    raise _fail(
        directory,
        "reordered",
        path,
        number,
        f"seq {seq} after seq {expected - 1}: out of order or repeated",
    )


def _check_record(
    directory: Path,
    files: list[Path],
    chain: _Chain,
    where: tuple[Path, int],
    record: dict[str, Any],
    stated: str,
    seq: Any,
) -> None:
    """One record against its own hash, its file's name and the chain before it."""
    path, number = where
    if record_hash(record) == stated and _is_gap(record, chain.expected):
        gap = {key: record[key] for key in ("first_seq", "last_seq")}
        chain.gaps.append({**gap, "at": f"{path.name}:{number}", "reason": record.get("reason")})
        return
    if record_hash(record) != stated:
        raise _fail(
            directory,
            "modified",
            path,
            number,
            f"record seq {seq}: its content does not match its hash",
        )
    if number == 1 and path.name != CURRENT and path.name != f"audit-{seq:012d}.jsonl":
        raise _fail(
            directory,
            "removed",
            path,
            number,
            f"the file starts at seq {seq}, not at the seq its name says",
        )
    _check_sequence(directory, files, path, number, seq, chain.expected)
    if record.get("prev") != chain.prev:
        raise _fail(
            directory,
            "modified",
            path,
            number,
            f"record seq {seq}: prev does not match the hash of the record before it "
            "(that record was changed and its hash recomputed, or replaced)",
        )


def _walk(
    directory: Path, files: list[Path], wanted: set[int], pruned: dict[str, Any] | None
) -> _Chain:
    """Every record of every file, oldest first; stops at the first problem. A pruned log's
    chain starts after the last record removed, at the hash ``audit.pruned`` names."""
    chain = _Chain()
    if pruned is not None:
        chain.expected, chain.prev = pruned["seq"] + 1, pruned["hash"]
        chain.pruned = pruned["seq"]
    for path, number, line in _lines(files):
        record, stated, seq = _parse(directory, path, number, line)
        _check_record(directory, files, chain, (path, number), record, stated, seq)
        if seq in wanted:
            chain.seen[seq] = stated
        chain.first_time = chain.first_time or record.get("time")
        chain.last_time = record.get("time")
        chain.expected, chain.prev, chain.records = seq + 1, stated, chain.records + 1
    return chain


def _check_head(
    directory: Path, head: dict[str, Any] | None, chain: _Chain, last_seq: int
) -> dict[str, Any]:
    """The head file must name the log's last record or one before it, by its hash."""
    if head is None:
        if chain.records:
            raise _fail(directory, "truncated", HEAD, None, "the head file is missing")
        head = {"seq": -1, "hash": ZERO_HASH}
    if head["seq"] > last_seq:
        raise _fail(
            directory,
            "truncated",
            HEAD,
            None,
            f"the head names seq {head['seq']} but the log ends at seq {last_seq}: "
            f"{head['seq'] - last_seq} record(s) cut off the end",
        )
    if head["seq"] >= 0 and head.get("hash") != chain.seen.get(head["seq"]):
        raise _fail(
            directory,
            "modified",
            HEAD,
            None,
            f"the head's hash for seq {head['seq']} is not that record's hash",
        )
    return head


def _check_anchors(
    directory: Path, anchors: tuple[tuple[int, str], ...], chain: _Chain, last_seq: int
) -> None:
    """Each anchor kept off the box must name a record of the log, with that record's hash."""
    for seq, digest in anchors:
        if chain.pruned is not None and seq < chain.pruned:
            raise _fail(
                directory,
                "pruned",
                PRUNED,
                None,
                f"record seq {seq} was shipped and removed here (the log starts after seq "
                f"{chain.pruned}): check this anchor against the shipped copy",
            )
        if seq > last_seq:
            raise _fail(
                directory,
                "truncated",
                HEAD,
                None,
                f"the anchor names seq {seq} but the log ends at seq {last_seq}",
            )
        if chain.seen.get(seq) != digest:
            raise _fail(
                directory,
                "modified",
                HEAD,
                None,
                f"record seq {seq} has hash {chain.seen.get(seq)}, the anchor kept off the box "
                f"says {digest}: the chain was rewritten",
            )


def verify_log(directory: Path, anchors: tuple[tuple[int, str], ...] = ()) -> VerifyReport:
    """Walk the whole chain. ``anchors`` are (seq, hash) pairs kept off the box (a copy of
    ``audit.head`` taken earlier): a rewritten chain cannot match them."""
    if not directory.is_dir():
        raise AuditError(
            f"audit directory {directory} does not exist",
            hint="pass --dir with the gateway's audit.dir",
        )
    try:  # before the log: a live gateway only ever moves it forward
        head, head_checked = read_head_checked(directory)
    except AuditError as error:  # torn: said as such, not as records cut off (the log's own)
        raise AuditError(
            f"audit log {directory} fails verification: torn head",
            hint=error.hint,
            problems=[Problem(path=HEAD, message=error.message)],
        ) from error
    pruned = read_mark(directory / PRUNED)
    files = log_files(directory)
    chain = _walk(
        directory,
        files,
        {seq for seq, _ in anchors} | ({head["seq"]} if head else set()),
        pruned,
    )
    if pruned is not None:
        chain.seen.setdefault(pruned["seq"], pruned["hash"])
    last_seq = chain.expected - 1
    head = _check_head(directory, head, chain, last_seq)
    _check_anchors(directory, anchors, chain, last_seq)
    return VerifyReport(
        directory=directory,
        records=chain.records,
        files=len(files),
        first_time=chain.first_time,
        last_time=chain.last_time,
        last_seq=last_seq,
        last_hash=chain.prev,
        beyond_head=last_seq - head["seq"],
        gaps=tuple(chain.gaps),
        pruned_through=None if pruned is None else pruned["seq"],
        forwarded=_forwarded(directory),
        head_checked=head_checked,
    )


def _forwarded(directory: Path) -> dict[str, int]:
    """The forwarders' cursors (``audit.forwarded-<target>``), for the report only."""
    cursors = {}
    for path in sorted(directory.glob("audit.forwarded-*")):
        mark = read_mark(path)
        if mark is not None:
            cursors[path.name.removeprefix("audit.forwarded-")] = int(mark["seq"])
    return cursors


def _newest_first(directory: Path) -> Iterator[dict[str, Any]]:
    for path in reversed(log_files(directory)):
        for line in reversed(path.read_bytes().splitlines()):
            if line.strip():
                yield json.loads(line)


def find_record(directory: Path, request_id: str) -> dict[str, Any] | None:
    """The record of one request (the gateway returns its id as ``X-Request-Id``)."""
    needle = f'"request_id":"{request_id}"'.encode()
    for path in reversed(log_files(directory)):
        for line in path.read_bytes().splitlines():
            if needle in line:
                record: dict[str, Any] = json.loads(line)
                return record
    return None


def find_records(directory: Path, request_id: str) -> list[dict[str, Any]]:
    """The records of a request id, oldest first: the one call the gateway gave that id, and
    every call whose client sent it as its own (X-Client-Request-Id or X-Request-Id; a client
    may reuse its id, on retries for one)."""
    # Matched as the log writes the values (canonical JSON, the client's id as record.clean
    # keeps it), then checked on the parsed record.
    own = clean(request_id, CLIENT_ID_LIMIT)
    needles = (
        b'"request_id":' + json.dumps(request_id, ensure_ascii=False).encode(),
        b'"client_request_id":' + json.dumps(own, ensure_ascii=False).encode(),
    )
    found: list[dict[str, Any]] = []
    for path in log_files(directory):
        for line in path.read_bytes().splitlines():
            if any(needle in line for needle in needles):
                record = json.loads(line)
                if request_id == record.get("request_id") or own == record.get("client_request_id"):
                    found.append(record)
    return found


def last_records(directory: Path, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` records, oldest first."""
    found: list[dict[str, Any]] = []
    for record in _newest_first(directory):
        if len(found) >= count:
            break
        found.append(record)
    return list(reversed(found))
