"""Audit records as RFC 5424 syslog messages, and back.

One record is one message::

    <PRI>1 TIME HOST appliance-gateway - MSGID [audit@32473 seq="7" head-seq="9" head-hash="."] MSG

- MSG is the record as JSON with every character outside printable ASCII escaped (``\\uXXXX``,
  DEL included): a message never holds a line break, a control character or a bidi override,
  whatever a client put into the request, so a collector writes it as one line and a terminal
  shows it as it is. The record's hash is over its canonical UTF-8 JSON, which ``json.loads``
  of this MSG gives back exactly: the copy verifies without the original bytes.
- The structured data carries the record's ``seq`` and the chain head (seq and hash of the
  newest committed record when the record was read): the remote copy shows records missing at
  its end, as ``audit.head`` does for the local log. 32473 is the enterprise number RFC 5612
  reserves for documentation; the SD-ID only has to be unique to this sender.
- MSGID is the record's ``event`` (``call`` for a call's record), PRI uses facility 13
  (log audit) and severity warning for the log's own events (gap, outage, repair), else info.

Over TLS (RFC 5425) each message is framed as ``LENGTH SP MESSAGE`` (octet counting), so even
a message the collector mangled cannot run into the next one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

SD_ID = "audit@32473"
APP_NAME = "appliance-gateway"
FACILITY_LOG_AUDIT = 13
_INFO, _WARNING = 6, 4
_WARN_EVENTS = frozenset({"audit_gap", "audit_outage", "audit_repair", "unrecordable"})
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")
_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_HEADER = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_BOM = b"\xef\xbb\xbf"
# Longer records go as their chain links only (see format_message).
MAX_MESSAGE_BYTES = 64 << 10
_LINKS = ("seq", "prev", "hash", "time", "event")


def _token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit``, or ``-``."""
    return _PRINTUSASCII.sub("_", value)[:limit] or "-"


def ascii_json(record: dict[str, Any]) -> bytes:
    """``record`` as JSON that is printable ASCII only (DEL is the one control character
    ``ensure_ascii`` leaves as it is; it can only occur inside a string)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.replace("\x7f", "\\u007f").encode("ascii")


def format_message(
    record: dict[str, Any],
    head: tuple[int, str],
    hostname: str,
    facility: int = FACILITY_LOG_AUDIT,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> bytes:
    """One record as one message. A record whose JSON is over ``max_bytes`` goes as its chain
    links only (``seq``, ``prev``, ``hash``, ``time``, ``event``) with ``content="omitted"`` and
    its size in the structured data: collectors cut or refuse long messages (rsyslog cuts at
    8 KiB and loses its framing past 200 kB unless told otherwise), and a cut record would
    read as an altered one. The gateway's own records stay far below (record.clean)."""
    event = record.get("event")
    event = event if isinstance(event, str) else "call"
    severity = _WARNING if event in _WARN_EVENTS else _INFO
    time = record.get("time")
    timestamp = time if isinstance(time, str) and _TIME.match(time) else "-"
    msg = ascii_json(record)
    omitted = ""
    if len(msg) > max_bytes:
        omitted = f' content="omitted" bytes="{len(msg)}"'
        msg = ascii_json({key: record[key] for key in _LINKS if key in record})
    data = (
        f'[{SD_ID} seq="{int(record["seq"])}" head-seq="{head[0]}" head-hash="{head[1]}"{omitted}]'
    )
    header = (
        f"<{facility * 8 + severity}>1 {timestamp} {_token(hostname, 255)} {APP_NAME} - "
        f"{_token(event, 32)} {data} "
    )
    return header.encode("ascii") + msg


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting framing."""
    return b"%d %s" % (len(message), message)


@dataclass(frozen=True)
class Message:
    hostname: str
    app_name: str
    data: dict[str, dict[str, str]]  # SD-ID -> params
    msg: bytes


def _structured_data(rest: bytes) -> tuple[dict[str, dict[str, str]], bytes]:
    """The SD elements at the start of ``rest`` and what follows them (RFC 5424 6.3)."""
    if rest.startswith(b"-"):
        return {}, rest[1:]
    elements: dict[str, dict[str, str]] = {}
    at = 0
    while rest[at : at + 1] == b"[":
        end = at + 1
        while end < len(rest) and rest[end : end + 1] not in (b" ", b"]"):
            end += 1
        sd_id = rest[at + 1 : end].decode("ascii", "replace")
        params: dict[str, str] = {}
        at = end
        while rest[at : at + 1] == b" ":
            eq = rest.index(b'="', at)
            name = rest[at + 1 : eq].decode("ascii", "replace")
            value, at = bytearray(), eq + 2
            while rest[at : at + 1] != b'"':
                if rest[at : at + 1] == b"\\" and rest[at + 1 : at + 2] in (b'"', b"\\", b"]"):
                    at += 1
                if at >= len(rest):
                    raise ValueError("structured data not closed")
                value += rest[at : at + 1]
                at += 1
            params[name] = value.decode("utf-8", "replace")
            at += 1
        if rest[at : at + 1] != b"]":
            raise ValueError("structured data not closed")
        elements[sd_id] = params
        at += 1
    if at == 0:
        raise ValueError("no structured data")
    return elements, rest[at:]


def parse_message(line: bytes) -> Message | None:
    """One RFC 5424 message as a collector wrote it (one line); None when it is not one."""
    match = _HEADER.match(line.rstrip(b"\r\n"))
    if match is None:
        return None
    try:
        data, msg = _structured_data(line.rstrip(b"\r\n")[match.end() :])
    except ValueError:
        return None
    msg = msg.removeprefix(b" ").removeprefix(_BOM)
    return Message(
        match[3].decode("ascii", "replace"), match[4].decode("ascii", "replace"), data, msg
    )
