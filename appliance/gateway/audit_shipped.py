"""Checking a shipped copy of the audit log: the file the site's collector (or a SIEM agent)
wrote from ``appliance-audit-forward``'s messages, one RFC 5424 message per line.

The copy verifies when its records, taken in order, form the chain: each record's hash
matches its content, ``seq`` counts up by one (an ``audit_gap`` record may skip the seqs it
names), ``prev`` names the record before; and no message names a chain head past the copy's
last record, or one with another hash (records missing at the end show that way).

Lines that are not this sender's messages (other programs, other hosts: pick one with
``host``) are passed over and counted. A message that arrives twice (the forwarder sends
again what the collector may not have written) is passed over when it is the same record,
and fails as ``repeated`` when it is not. The copy may start after seq 0 (forwarding began
later, or the collector's file was rotated): the report says where it starts. A record too
long for a syslog message arrives as its chain links only (``content="omitted"``): the chain
still runs through it, and the report lists its seq, whose content is checked on the appliance.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import AuditError, Problem
from appliance.gateway.audit import record_hash
from appliance.gateway.syslog import APP_NAME, SD_ID, Message, parse_message

# Seqs kept to recognise a duplicate: the forwarder resends at most what one connection had
# not confirmed, a few thousand records.
_RECENT = 1 << 17


def _fail(path: Path, kind: str, line: int | None, what: str) -> AuditError:
    return AuditError(
        f"shipped audit copy {path} fails verification: {kind}",
        hint="keep this file as evidence; the problem is at the place named above",
        problems=[Problem(path=path.name, line=line, message=what)],
    )


@dataclass
class ShippedReport:
    path: Path
    host: str | None = None
    records: int = 0
    first_seq: int | None = None
    last_seq: int = -1
    last_hash: str = ""
    head_seq: int = -1
    duplicates: int = 0
    other_lines: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    # Records over the forwarder's max_message_bytes: their links are checked, their content
    # only on the appliance (appliance audit show, verify there).
    omitted: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "shipped": str(self.path),
            "host": self.host,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "head_seq": self.head_seq,
            "duplicates": self.duplicates,
            "other_lines": self.other_lines,
            "gaps": self.gaps,
            "omitted": self.omitted,
        }


class _Walk:
    def __init__(self, path: Path, host: str | None) -> None:
        self.report = ShippedReport(path, host)
        self.recent: OrderedDict[int, str] = OrderedDict()
        self.heads: dict[int, str] = {}  # head seq -> hash, as the messages name them

    def mine(self, message: Message | None) -> bool:
        if message is None or message.app_name != APP_NAME or SD_ID not in message.data:
            return False
        if self.report.host is None:
            self.report.host = message.hostname
        return message.hostname == self.report.host

    def take(self, number: int, message: Message) -> None:
        path, report = self.report.path, self.report
        try:
            record = json.loads(message.msg)
            if not isinstance(record, dict):
                raise TypeError("not an object")
            stated, seq = record["hash"], record["seq"]
            head = message.data[SD_ID]
            head_seq, head_hash = int(head["head-seq"]), head["head-hash"]
        except (ValueError, KeyError, TypeError):
            raise _fail(path, "modified", number, "not an audit record message") from None
        omitted = head.get("content") == "omitted"
        if type(seq) is not int or not isinstance(stated, str):
            raise _fail(path, "modified", number, "not an audit record message")
        if not omitted and record_hash(record) != stated:
            raise _fail(path, "modified", number, f"record seq {seq}: content does not match hash")
        named = self.heads.setdefault(head_seq, head_hash)
        if named != head_hash or self.recent.get(head_seq, head_hash) != head_hash:
            raise _fail(path, "modified", number, f"the head's hash for seq {head_seq} differs")
        report.head_seq = max(report.head_seq, head_seq)
        if report.first_seq is not None and seq <= report.last_seq:
            if self.recent.get(seq) == stated:
                report.duplicates += 1
                return
            raise _fail(path, "repeated", number, f"seq {seq} again, with another record")
        self._continue(number, record, seq)
        if self.heads.get(seq, stated) != stated:
            raise _fail(path, "modified", number, f"record seq {seq} is not the one a head names")
        if omitted:
            report.omitted.append(seq)
        report.first_seq = seq if report.first_seq is None else report.first_seq
        report.records += 1
        report.last_seq, report.last_hash = seq, stated
        self.recent[seq] = stated
        if len(self.recent) > _RECENT:
            self.recent.popitem(last=False)

    def _continue(self, number: int, record: dict[str, Any], seq: Any) -> None:
        """``record`` must follow the last one (or open the copy)."""
        path, report = self.report.path, self.report
        if report.first_seq is None:
            return
        expected = report.last_seq + 1
        gap = (
            seq != expected
            and record.get("event") == "audit_gap"
            and isinstance(record.get("first_seq"), int)
            and record["first_seq"] <= expected
            and seq == record.get("last_seq", -2) + 1
        )
        if gap:
            report.gaps.append({"first_seq": expected, "last_seq": seq - 1, "line": number})
            return
        if seq != expected:
            raise _fail(
                path,
                "removed",
                number,
                f"seq jumps from {report.last_seq} to {seq}: {seq - expected} record(s) missing",
            )
        if record.get("prev") != report.last_hash:
            raise _fail(path, "modified", number, f"record seq {seq}: prev is not the hash before")

    def finish(self) -> ShippedReport:
        report = self.report
        if report.first_seq is None:
            raise _fail(report.path, "empty", None, "no audit record messages in the copy")
        if report.head_seq > report.last_seq:
            raise _fail(
                report.path,
                "truncated",
                None,
                f"a message names the head seq {report.head_seq} but the copy ends at seq "
                f"{report.last_seq}: {report.head_seq - report.last_seq} record(s) missing "
                "(or not forwarded yet)",
            )
        return report


def verify_shipped(path: Path, host: str | None = None) -> ShippedReport:
    if not path.is_file():
        raise AuditError(
            f"shipped audit copy {path} is not a file",
            hint="pass --shipped with the file the collector writes",
        )
    walk = _Walk(path, host)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            message = parse_message(line)
            if not walk.mine(message):
                walk.report.other_lines += 1
                continue
            assert message is not None
            walk.take(number, message)
    return walk.finish()
