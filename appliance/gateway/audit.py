"""The gateway's append-only, hash-chained audit log (written by the gateway, checked by
``appliance audit verify``).

Layout in the audit directory:

- ``audit.jsonl``: the current file, one JSON record per line, each line written whole.
- ``audit-<first seq, 12 digits>.jsonl``: earlier files, renamed at rotation; removed only once
  shipped, and only with ``keep_rotated_bytes`` set (see audit_retention).
- ``audit.head``: ``{"seq", "hash", "file"}`` of the newest record and ``check`` (its own
  digest, so a copy torn mid-write shows), rewritten after every batch (in place, one whole
  block: audit_head), so a cut-off tail (records removed from the end) shows.

Each record has ``seq`` (0, 1, ... across all files), ``prev`` (the previous record's ``hash``,
64 zeros for seq 0) and ``hash``: sha256 of the record's canonical JSON (sorted keys, compact
separators, UTF-8) without ``hash``. The chain spans files. It detects records modified,
removed, reordered or cut off by anyone who does not also recompute every later hash and the
head: sha256 is keyless, so against someone with write access and intent it only shows
clumsy edits; ship the head hash off the box for more.

Resuming after a restart the gateway continues ``seq``/``prev`` from the last record and
refuses to start (AuditError) when that tail is visibly broken: its hash wrong, the head
naming a record the log no longer holds, or a head torn (not matching its own check). Records
after the head (the gateway stopped between writing records and rewriting the head) are
accepted and the head is brought forward. A last
line cut off mid-record (a crash during a write) is moved to ``torn-<digest>.bin`` and sealed by
an ``audit_repair`` record that says so; the chain continues, never restarts at seq 0.

Faults while running heal (``AuditWriter`` retries): a batch that fails (full disk, no file
descriptors) leaves nothing on disk and the chain where it was. ``audit.jsonl`` removed or
renamed under the gateway is noticed before the next write: a new file starts with an
``audit_gap`` record naming the seqs that file held, which verify reports.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from appliance.errors import AuditError
from appliance.gateway.audit_head import HEAD, HeadFile, read_head
from appliance.gateway.record import clean, now_iso

__all__ = ["CURRENT", "HEAD", "ZERO_HASH", "AuditLog", "log_files", "read_head", "record_hash"]

LOG = logging.getLogger("appliance.gateway.audit")

CURRENT = "audit.jsonl"
ZERO_HASH = "0" * 64
_TAIL_READ = 1 << 16


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def rotated_name(first_seq: int) -> str:
    return f"audit-{first_seq:012d}.jsonl"


def log_files(directory: Path) -> list[Path]:
    """Every file of the chain, oldest first: rotated files by first seq, then the current."""
    rotated = []
    for path in directory.glob("audit-*.jsonl"):
        number = path.name[len("audit-") : -len(".jsonl")]
        if number.isdigit():
            rotated.append((int(number), path))
    files = [path for _, path in sorted(rotated)]
    if (directory / CURRENT).exists():
        files.append(directory / CURRENT)
    return files


def _last_line(path: Path) -> tuple[bytes | None, bool]:
    """The file's last line (None when empty) and whether it ends with a newline."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None, True
        handle.seek(max(0, size - _TAIL_READ))
        tail = handle.read()
    complete = tail.endswith(b"\n")
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    return lines[-1], complete


def _first_seq(path: Path) -> int | None:
    with path.open("rb") as handle:
        line = handle.readline()
    return int(json.loads(line)["seq"]) if line.strip() else None


class AuditLog:
    """The one writer of an audit directory. Not thread-safe: ``AuditWriter`` serializes."""

    def __init__(self, directory: Path, max_bytes: int = 64 << 20, fsync: bool = False) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.seq = 0
        self.prev = ZERO_HASH
        self._file: Any = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._size = 0
        self._first_seq = 0
        self._head_file = CURRENT
        self._pending: list[dict[str, Any]] = []  # event records to write before the next batch
        self._head = HeadFile(directory, fsync)
        self.rotations = 0

    def open(self) -> None:
        """Resume the chain from what is on disk (see the module text for what is refused)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            head = read_head(self.directory)
        except AuditError as error:
            raise AuditError(
                f"audit log {self.directory} cannot be continued: {error.message}",
                hint=f"a crash cannot leave {HEAD} so (one block, one write): it was restored "
                "from a copy taken while the gateway wrote it, or edited. Restored: copy "
                f"{HEAD} again from the source. Else keep it as evidence, then move {HEAD} "
                "aside: the gateway rebuilds it from the log's last record",
            ) from error
        torn = seal_torn_tail(self.directory)
        last, where = self._last_record()
        if last is None:
            if head is not None and head["seq"] >= (0 if torn is None else 1):
                raise self._refusal(f"the head names seq {head['seq']} but the log is empty")
        else:
            self.seq, self.prev = last["seq"] + 1, last["hash"]
            # A torn line is the record after the last whole one: the head may name it.
            allowed = last["seq"] + (0 if torn is None else 1)
            if head is not None and head["seq"] > allowed:
                raise self._refusal(
                    f"the head names seq {head['seq']} but the log ends at seq {last['seq']} "
                    f"({where}): records were cut off"
                )
            if head is not None and head["seq"] == last["seq"] and head["hash"] != last["hash"]:
                raise self._refusal(f"the last record ({where}) is not the one the head names")
            if head is None or head["seq"] < last["seq"]:
                LOG.warning("audit head behind the log (seq %s); bringing it forward", where)
        if torn is not None:
            lost = head if head is not None and head["seq"] == self.seq else None
            self._pending.append({**torn, "time": now_iso(), "lost_head": lost})
        self._open_current()
        self._head_file = where.split(":")[0] if last is not None else CURRENT
        self._write_head()
        if self._pending:
            try:
                self.append_many([])
            except OSError as error:  # a full disk at start: written with the first batch
                LOG.warning("audit: repair record not written yet: %s", error)

    def _open_current(self) -> None:
        current = self.directory / CURRENT
        self._file = current.open("ab", buffering=0)
        stat = os.fstat(self._file.fileno())
        self._identity = (stat.st_dev, stat.st_ino)
        self._size = self._file.tell()
        first = _first_seq(current) if self._size else None
        self._first_seq = self.seq if first is None else first

    def _check_current(self) -> None:
        """Never write into a file that is no longer the directory's ``audit.jsonl``: when it
        was removed or renamed under the gateway, open a new one and record the gap."""
        if self._file is not None:
            try:
                stat = (self.directory / CURRENT).stat()
                same = (stat.st_dev, stat.st_ino) == self._identity
            except FileNotFoundError:
                same = False
            if same:
                return
            gone = _fd_path(self._file.fileno())
            self._file.close()
            self._file = None
            if self._first_seq < self.seq:
                self._pending.append(
                    {
                        "event": "audit_gap",
                        "time": now_iso(),
                        "first_seq": self._first_seq,
                        "last_seq": self.seq - 1,
                        "last_hash": self.prev,
                        "reason": f"{CURRENT} was removed or renamed under the gateway "
                        f"(now {clean(gone, 512)})",
                    }
                )
                LOG.error("audit: %s vanished under the gateway; recording the gap", CURRENT)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._open_current()

    def _last_record(self) -> tuple[dict[str, Any] | None, str]:
        for path in reversed(log_files(self.directory)):
            line, complete = _last_line(path)
            if line is None:
                continue
            if not complete:
                raise self._refusal(f"the last line of {path.name} is cut off mid-record")
            try:
                record = json.loads(line)
                valid = record_hash(record) == record["hash"] and isinstance(record["seq"], int)
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                raise self._refusal(f"the last record of {path.name} does not match its hash")
            return record, f"{path.name}:{record['seq']}"
        return None, CURRENT

    def _refusal(self, what: str) -> AuditError:
        return AuditError(
            f"audit log {self.directory} cannot be continued: {what}",
            hint="run `appliance audit verify --dir DIR` and keep the evidence; to serve again "
            "move the directory aside (the gateway then starts a new chain at seq 0)",
        )

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Chain and write one record (``seq``, ``prev`` and ``hash`` are set here)."""
        return self.append_many([fields])[0]

    def append_many(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write ``batch`` (after any pending event records) as one write, then the head; the
        records of ``batch`` are returned. On an OSError nothing of the batch stays on disk
        and the chain is where it was, so the next batch can try again."""
        seq, prev, size = self.seq, self.prev, self._size
        try:
            self._check_current()
            events = list(self._pending)
            records, lines = [], []
            for fields in [*events, *batch]:
                record, line = self._chain(fields)
                records.append(record)
                lines.append(line)
            data = b"".join(lines)
            # One unbuffered write per batch: a reader never sees half a line in practice.
            written = self._file.write(data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write to {self.directory / CURRENT}")
            if self.fsync:
                os.fsync(self._file.fileno())
            self._size += len(data)
            self._head_file = CURRENT
            self._write_head()
        except BaseException:
            self.seq, self.prev, self._size = seq, prev, size
            self._roll_back(size)
            raise
        self._pending.clear()
        if self._size >= self.max_bytes:
            try:
                self._rotate()
            except OSError as error:  # the records are safe; rotation is tried after the next
                LOG.warning("audit log not rotated yet: %s", error)
        return records[len(events) :]

    def _chain(self, fields: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """One record and its line. A record that cannot be serialised (the caller's bug, or
        input that escaped ``record.clean``) is replaced by one saying so: it never takes the
        batch, or the log, down with it."""
        record = {**fields, "seq": self.seq, "prev": self.prev}
        try:
            record["hash"] = hashlib.sha256(canonical(record)).hexdigest()
            line = canonical(record) + b"\n"
        except (TypeError, ValueError, RecursionError) as error:
            request_id = fields.get("request_id")
            record = {
                "event": "unrecordable",
                "time": now_iso(),
                "request_id": request_id if isinstance(request_id, str) else None,
                "error": clean(f"{type(error).__name__}: {error}", 512),
                "seq": self.seq,
                "prev": self.prev,
            }
            record["hash"] = hashlib.sha256(canonical(record)).hexdigest()
            line = canonical(record) + b"\n"
        self.seq, self.prev = self.seq + 1, record["hash"]
        return record, line

    def _roll_back(self, size: int) -> None:
        """Cut what a failed batch left at the end of the file (a full disk takes part of a
        write); a file that cannot even be cut is reopened before the next batch."""
        if self._file is None:
            return
        try:
            os.ftruncate(self._file.fileno(), size)
        except OSError as error:
            LOG.error("audit: cannot cut a failed write back: %s", error)
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
            self._identity = None

    def _rotate(self) -> None:
        target = self.directory / rotated_name(self._first_seq)
        if target.exists():
            raise OSError(errno.EEXIST, f"cannot rotate the audit log: {target} already exists")
        (self.directory / CURRENT).rename(target)
        self._file.close()
        self._file = None
        self._head_file = target.name
        self._first_seq = self.seq
        self.rotations += 1
        LOG.info("audit log rotated to %s", target.name)
        with contextlib.suppress(OSError):  # tried again before the next write
            self._open_current()
            self._write_head()

    def _write_head(self) -> None:
        self._head.write(self.seq - 1, self.prev, self._head_file)

    def close(self) -> None:
        self._head.close()
        if self._file is not None:
            self._file.close()
            self._file = None


def _fd_path(fd: int) -> str:
    try:
        return str(Path(f"/proc/self/fd/{fd}").readlink())
    except OSError:
        return "unknown"


def seal_torn_tail(directory: Path) -> dict[str, Any] | None:
    """Cut a last line that a crash or a full disk left half-written off ``audit.jsonl``; the
    bytes go to ``torn-<sha256>.bin`` beside it (kept as evidence) and the returned fields
    become a repair record, so the chain stays verifiable and says what happened."""
    path = directory / CURRENT
    if not path.exists():
        return None
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        handle.seek(max(0, size - _TAIL_READ))
        tail = handle.read()
        if tail.endswith(b"\n"):
            return None
        cut = tail.rfind(b"\n")
        if cut < 0 and size > _TAIL_READ:
            raise AuditError(f"the last line of {path} is longer than any record: not repaired")
        keep = size - len(tail) + cut + 1
        torn = tail[cut + 1 :]
        digest = hashlib.sha256(torn).hexdigest()
        evidence = directory / f"torn-{digest[:16]}.bin"
        saved_as: str | None = evidence.name
        try:
            evidence.write_bytes(torn)
        except OSError as error:  # a full disk: the record keeps the length and digest
            LOG.error("audit: torn bytes not saved: %s", error)
            saved_as = None
        handle.truncate(keep)
    LOG.warning("audit: sealed a torn last line (%d bytes) of %s", len(torn), path)
    return {
        "event": "audit_repair",
        "reason": "the last line was cut off mid-record (a crash or a full disk)",
        "torn_bytes": len(torn),
        "torn_sha256": digest,
        "saved_as": saved_as,
    }
