"""``audit.head``: the seq and hash of the newest committed record (and the file that holds it).

The writer rewrites the head in place after every batch: one ``pwrite`` of a fixed-size block
at offset 0 into a file it keeps open. Replacing the file by rename each time, as before, cost
1.5 ms a batch on ext4 (``auto_da_alloc`` starts writeback of the new file on every rename over
an old one, measured in benchmarks/gateway.py), more than the rest of a call's audit work. The
head is created, or re-created when it vanished, by writing a temporary file and renaming it,
so it never exists half-written.

What a crash leaves: a process killed between two writes leaves one whole block (a ``pwrite``
either happened or did not), so the head is the new one or the one before, which names an
earlier record (accepted: "a head behind the log"). The block is 256 bytes, inside one disk
sector, which storage writes whole on power loss; with ``audit.fsync`` it is flushed
(``fdatasync``: the block is allocated, only its bytes change) before any answer goes out. A
reader of the live directory could copy a block while the gateway rewrites it: ours read again
until the block matches its check (below), so they never take a half-copied head for one. The
format is the one earlier versions wrote, padded with spaces, with ``check`` added.

The head checks itself: ``check`` is the sha256 of the canonical JSON (sorted keys, compact,
UTF-8) of its other fields. A reader that is not ours (``cp``, a SIEM agent, a backup) can copy
the block while it is rewritten and get half of one head and half of the next: such a copy no
longer matches its check, and is reported as torn (copy it again), never taken for a head that
names another record (which reads as records cut off the end). The check is no seal: anyone who
edits the head can recompute it. A head without ``check`` (written by a release before it) is
accepted unchecked, and verify says so; the gateway writes it with a check when it starts.

The gateway refuses to start on a torn head, as on any head it cannot trust: a crash cannot
leave one (one block, one ``pwrite``), so it came from a restore of a torn copy, or an edit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from appliance.errors import AuditError

HEAD = "audit.head"
HEAD_BYTES = 256
_READS = 100


def head_check(fields: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of the head's fields other than ``check``."""
    body = {key: value for key, value in fields.items() if key != "check"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def head_block(seq: int, digest: str, file: str) -> bytes:
    """The head as written: JSON padded with spaces to ``HEAD_BYTES`` (a newline last)."""
    fields: dict[str, Any] = {"seq": seq, "hash": digest, "file": file}
    data = json.dumps({**fields, "check": head_check(fields)}).encode()
    if len(data) >= HEAD_BYTES:  # a file name is at most audit-<12 digits>.jsonl
        raise ValueError(f"audit head too long ({len(data)} bytes)")
    return data.ljust(HEAD_BYTES - 1) + b"\n"


def read_head(directory: Path) -> dict[str, Any] | None:
    """The head's fields (without ``check``), or None when there is no head."""
    return read_head_checked(directory)[0]


def read_head_checked(directory: Path) -> tuple[dict[str, Any] | None, bool | None]:
    """The head's fields and whether it carried a check (False: written by a release before
    the check; None: no head). A head that does not match its own check raises (torn)."""
    path = directory / HEAD
    try:
        data = _settled(path)
    except FileNotFoundError:
        return None, None
    return parse_head(path, data)


def parse_head(path: Path, data: bytes) -> tuple[dict[str, Any], bool]:
    try:
        head = json.loads(data)
    except ValueError as error:  # UnicodeDecodeError included
        raise torn_head(path, f"it does not parse as JSON ({error})") from error
    if not isinstance(head, dict):
        raise torn_head(path, "it is not a JSON object")
    check = head.pop("check", None)
    if check is not None and check != head_check(head):
        raise torn_head(path, "its content does not match its check")
    if type(head.get("seq")) is not int:
        raise torn_head(path, "it does not hold a seq")
    return head, check is not None


def torn_head(path: Path, why: str) -> AuditError:
    return AuditError(
        f"{path} is torn: {why}; it holds parts of two heads (copied while the gateway "
        "rewrote it) or was damaged, so it names no record",
        hint=f"copy {HEAD} again from the gateway's audit directory, or read it again; if the "
        f"gateway's own {HEAD} is so, keep it as evidence. This is not a cut-off chain: the "
        "records are checked on their own",
    )


def _whole(data: bytes) -> bool:
    """Whether ``data`` is a head that matches its check."""
    try:
        head = json.loads(data)
    except ValueError:
        return False
    return isinstance(head, dict) and head.get("check") == head_check(head)


def _unchecked(data: bytes) -> bool:
    """Whether ``data`` is a head as a release before the check wrote it."""
    try:
        head = json.loads(data)
    except ValueError:
        return False
    return isinstance(head, dict) and "check" not in head


def _settled(path: Path) -> bytes:
    """The head's bytes, read again while they are torn (the gateway may be rewriting it): a
    head that matches its check is whole at once; one without a check (an earlier release's)
    once two reads agree. A copy torn for good reads the same every time, and is returned."""
    previous = None
    data = path.read_bytes()
    for _ in range(_READS):
        if _whole(data) or (data == previous and _unchecked(data)):
            break
        previous, data = data, path.read_bytes()
    return data


def write_head(directory: Path, seq: int, digest: str, file: str) -> None:
    """Write a head once, whole and flushed (a copy's: audit ship)."""
    head = HeadFile(directory, fsync=True)
    try:
        head.write(seq, digest, file)
    finally:
        head.close()


class HeadFile:
    """The writer's side: the head kept open, rewritten in place (see the module text)."""

    def __init__(self, directory: Path, fsync: bool) -> None:
        self.path = directory / HEAD
        self.fsync = fsync
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._block: bytes | None = None  # the head last written whole

    def write(self, seq: int, digest: str, file: str) -> None:
        block = head_block(seq, digest, file)
        if self._fd is not None and self._still_ours():
            try:
                if os.pwrite(self._fd, block, 0) != len(block):
                    raise OSError(errno.ENOSPC, f"short write to {self.path}")
                if self.fsync:
                    os.fdatasync(self._fd)
            except OSError:
                # The caller takes the batch's records back off the log: a head readers may
                # already see must not go on naming them (truncated, then seqs used again).
                if self._block is not None:
                    with contextlib.suppress(OSError):
                        os.pwrite(self._fd, self._block, 0)
                self.close()  # created afresh by the next write
                raise
            self._block = block
            return
        stale = self._fd
        self._create(block)  # first: a failed creation leaves things as they were
        if stale is not None:
            os.close(stale)

    def _still_ours(self) -> bool:
        """Whether ``audit.head`` is still the file we hold (not removed or replaced)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    def _create(self, block: bytes) -> None:
        temp = self.path.with_name(f".{HEAD}.tmp")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            if os.write(fd, block) != len(block):
                raise OSError(errno.ENOSPC, f"short write to {temp}")
            if self.fsync:
                os.fsync(fd)
            temp.replace(self.path)
            if self.fsync:
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except BaseException:
            os.close(fd)
            raise
        stat = os.fstat(fd)
        self._fd, self._identity, self._block = fd, (stat.st_dev, stat.st_ino), block

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._identity, self._block = self._fd, None, None, None
            os.close(fd)
