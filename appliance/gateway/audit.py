"""The gateway's append-only, hash-chained audit log (written by the gateway, checked by
``appliance audit verify``).

Layout in the audit directory:

- ``audit.jsonl``: the current file, one JSON record per line, each line written whole.
- ``audit-<first seq, 12 digits>.jsonl``: earlier files, renamed at rotation, never deleted.
- ``audit.head``: ``{"seq", "hash", "file"}`` of the newest record, replaced atomically after
  every batch, so a cut-off tail (records removed from the end) shows.

Each record has ``seq`` (0, 1, ... across all files), ``prev`` (the previous record's ``hash``,
64 zeros for seq 0) and ``hash``: sha256 of the record's canonical JSON (sorted keys, compact
separators, UTF-8) without ``hash``. The chain spans files. It detects records modified,
removed, reordered or cut off by anyone who does not also recompute every later hash and the
head: sha256 is keyless, so against someone with write access and intent it only shows
clumsy edits; ship the head hash off the box for more.

Resuming after a restart the gateway continues ``seq``/``prev`` from the last record and
refuses to start (AuditError) when that tail is visibly broken: its last line cut off, its
hash wrong, or the head naming a record the log no longer holds. Records after the head (the
gateway stopped between writing records and replacing the head) are accepted and the head is
brought forward.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

from appliance.errors import AuditError

LOG = logging.getLogger("appliance.gateway.audit")

CURRENT = "audit.jsonl"
HEAD = "audit.head"
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


def read_head(directory: Path) -> dict[str, Any] | None:
    try:
        head = json.loads((directory / HEAD).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AuditError(
            f"{directory / HEAD} cannot be read as JSON: {error}",
            hint="the head file was damaged; run appliance audit verify",
        ) from error
    if not isinstance(head, dict) or not isinstance(head.get("seq"), int):
        raise AuditError(f"{directory / HEAD} does not hold a seq")
    return head


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
        self._size = 0
        self._first_seq = 0
        self._head_file = CURRENT

    def open(self) -> None:
        """Resume the chain from what is on disk (see the module text for what is refused)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        head = read_head(self.directory)
        last, where = self._last_record()
        if last is None:
            if head is not None and head["seq"] >= 0:
                raise self._refusal(f"the head names seq {head['seq']} but the log is empty")
        else:
            self.seq, self.prev = last["seq"] + 1, last["hash"]
            if head is not None and head["seq"] > last["seq"]:
                raise self._refusal(
                    f"the head names seq {head['seq']} but the log ends at seq {last['seq']} "
                    f"({where}): records were cut off"
                )
            if head is not None and head["seq"] == last["seq"] and head["hash"] != last["hash"]:
                raise self._refusal(f"the last record ({where}) is not the one the head names")
            if head is None or head["seq"] < last["seq"]:
                LOG.warning("audit head behind the log (seq %s); bringing it forward", where)
        current = self.directory / CURRENT
        self._file = current.open("ab", buffering=0)
        self._size = self._file.tell()
        first = _first_seq(current) if self._size else None
        self._first_seq = self.seq if first is None else first
        self._head_file = where.split(":")[0] if last is not None else CURRENT
        self._write_head()

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
        records, lines = [], []
        for fields in batch:
            record = {**fields, "seq": self.seq, "prev": self.prev}
            record["hash"] = hashlib.sha256(canonical(record)).hexdigest()
            lines.append(canonical(record) + b"\n")
            records.append(record)
            self.seq, self.prev = self.seq + 1, record["hash"]
        data = b"".join(lines)
        # One unbuffered write per batch: a reader never sees half a line in practice.
        written = self._file.write(data)
        if written != len(data):
            raise AuditError(f"short write to {self.directory / CURRENT}")
        if self.fsync:
            os.fsync(self._file.fileno())
        self._size += len(data)
        self._head_file = CURRENT
        if self._size >= self.max_bytes:
            self._rotate()
        self._write_head()
        return records

    def _rotate(self) -> None:
        self._file.close()
        target = self.directory / rotated_name(self._first_seq)
        if target.exists():
            raise AuditError(f"cannot rotate the audit log: {target} already exists")
        (self.directory / CURRENT).rename(target)
        self._head_file = target.name
        self._file = (self.directory / CURRENT).open("ab", buffering=0)
        self._size = 0
        self._first_seq = self.seq
        LOG.info("audit log rotated to %s", target.name)

    def _write_head(self) -> None:
        data = json.dumps({"seq": self.seq - 1, "hash": self.prev, "file": self._head_file})
        temp = self.directory / f".{HEAD}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, data.encode() + b"\n")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        temp.replace(self.directory / HEAD)
        if self.fsync:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_Item = tuple[dict[str, Any], "concurrent.futures.Future[dict[str, Any]]"]


class AuditWriter:
    """Serializes appends on one thread, off the event loop; records that queue up while a
    write is in progress go out together (one write, one head replace)."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.failed: BaseException | None = None
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, fields: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._queue.put((fields, future))
        return future

    async def write(self, fields: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.wrap_future(self.submit(fields))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                records = self.log.append_many([fields for fields, _ in batch])
            except BaseException as error:  # the gateway refuses calls from now on
                self.failed = error
                LOG.error("audit write failed: %s", error)
                for _, future in batch:
                    future.set_exception(error)
            else:
                for (_, future), record in zip(batch, records, strict=True):
                    future.set_result(record)
            if stop:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.log.close()
