"""Rotated audit files: shipped off the box, then (only then) removed to keep the disk free.

``ship`` (``appliance audit ship``) copies every rotated file to another directory (a mount of
the log host, removable media), each copy written beside and renamed once whole, with an
``audit.head`` there naming the last record shipped, so the copy verifies on its own. It then
writes ``audit.shipped`` (``{"seq", "hash"}`` of that record) into the audit directory.

``prune`` (the gateway, after each rotation) removes the oldest rotated files while they take
more than ``keep_rotated_bytes``, but never a file holding a record after the shipped mark,
and never when the mark does not match the log. Before each removal it replaces
``audit.pruned`` (``{"seq", "hash"}`` of the file's last record): verify starts the chain there,
so a pruned log still verifies, and says from which seq.

With ``audit.forward`` set, the forwarders' cursors (``audit.forwarded-<target>``, see forward)
take the place of ``audit.shipped``: a file goes only once every target has it, and not at all
while a forwarder has not started or its cursor names a record the log does not hold.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.errors import AuditError
from appliance.gateway.audit import CURRENT, log_files, read_head
from appliance.gateway.audit_head import write_head

LOG = logging.getLogger("appliance.gateway.audit")

SHIPPED = "audit.shipped"
PRUNED = "audit.pruned"


def read_mark(path: Path) -> dict[str, Any] | None:
    """A ``{"seq", "hash"}`` mark file, or None when there is none."""
    try:
        mark = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AuditError(f"{path} cannot be read as JSON: {error}") from error
    if not isinstance(mark, dict) or type(mark.get("seq")) is not int:
        raise AuditError(f"{path} does not hold a seq")
    if not isinstance(mark.get("hash"), str):
        raise AuditError(f"{path} does not hold a hash")
    return mark


def write_mark(path: Path, seq: int, digest: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w") as out:
        out.write(json.dumps({"seq": seq, "hash": digest}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    temp.replace(path)


def last_record(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - (1 << 16)))
        line = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    record: dict[str, Any] = json.loads(line)
    return record


def rotated(directory: Path) -> list[Path]:
    return [path for path in log_files(directory) if path.name != CURRENT]


def ship(directory: Path, target: Path) -> dict[str, Any]:
    """Copy the rotated files not yet in ``target`` there, then mark them shipped."""
    from appliance.gateway.audit_verify import verify_log  # verify imports this module

    files = rotated(directory)
    if not files:
        return {"shipped": 0, "seq": None}
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in files:
        copy = target / path.name
        if copy.exists() and copy.stat().st_size == path.stat().st_size:
            continue
        temp = target / f".{path.name}.tmp"
        with path.open("rb") as source, temp.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(copy)
        copied += 1
    last = last_record(files[-1])
    write_head(target, last["seq"], last["hash"], files[-1].name)
    report = verify_log(target)  # the copy is a whole chain up to its head, or nothing is marked
    write_mark(directory / SHIPPED, last["seq"], last["hash"])
    LOG.info("shipped %d file(s) to %s, through seq %d", copied, target, last["seq"])
    return {"shipped": copied, "seq": last["seq"], "records": report.records}


def _matches(directory: Path, files: list[Path], seq: int, digest: str) -> bool:
    """Whether the log holds record ``seq`` with hash ``digest``: looked up in the rotated
    file whose name says it holds it, or (past them) named by the head or before it."""
    if files and seq > last_record(files[-1])["seq"]:
        head = read_head(directory)
        return head is not None and seq <= head["seq"]
    for path in reversed(files):
        if int(path.name[len("audit-") : -len(".jsonl")]) <= seq:
            with path.open("rb") as handle:
                for line in handle:
                    record = json.loads(line)
                    if record["seq"] == seq:
                        return bool(record.get("hash") == digest)
            return False
    return False


def _forwarded_mark(
    directory: Path, files: list[Path], cursors: list[str]
) -> dict[str, Any] | None:
    """The oldest of the forwarders' cursors, when every one names a record of this log;
    None (nothing may be removed) when one is missing or does not match."""
    marks = []
    for name in cursors:
        mark = read_mark(directory / name)
        if mark is None:
            return None
        marks.append((name, mark))
    for name, mark in marks:
        if not _matches(directory, files, mark["seq"], mark["hash"]):
            LOG.error("audit: %s names no record of this log as marked; nothing removed", name)
            return None
    return min((mark for _, mark in marks), key=lambda mark: int(mark["seq"]))


def prune(directory: Path, keep_rotated_bytes: int | None, forwarded: Sequence[str] = ()) -> int:
    """Remove shipped rotated files, oldest first, while they take more than the limit; the
    number removed. Refuses (logs, removes nothing) when the mark does not match the log.
    ``forwarded`` names the forwarders' cursor files (audit.forward set): then a file is
    shipped once every forwarder is past its last record, and ``audit.shipped`` is not used."""
    if keep_rotated_bytes is None:
        return 0
    files = rotated(directory)
    total = sum(path.stat().st_size for path in files)
    if total <= keep_rotated_bytes:
        return 0
    if forwarded:
        mark = _forwarded_mark(directory, files, list(forwarded))
        if mark is None:
            return 0
    else:
        mark = read_mark(directory / SHIPPED)
        if mark is None:
            return 0
        # ship marks the last record of a rotated file: that record must be in the log as marked.
        ends = {(last["seq"], last["hash"]) for last in map(last_record, files)}
        if (mark["seq"], mark["hash"]) not in ends:
            LOG.error("audit: %s names no record of this log as marked; nothing removed", SHIPPED)
            return 0
    removed = 0
    for path in files:
        last = last_record(path)
        if total <= keep_rotated_bytes or last["seq"] > mark["seq"]:
            break
        write_mark(directory / PRUNED, last["seq"], last["hash"])
        size = path.stat().st_size
        path.unlink()
        total -= size
        removed += 1
        LOG.info("audit: removed %s (shipped through seq %d)", path.name, mark["seq"])
    return removed
