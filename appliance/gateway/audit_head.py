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
reader of the live directory could copy a block while the gateway rewrites it: it reads until
two reads in a row agree, so it never takes a half-copied head for one. The format is the one
earlier versions wrote, padded with spaces.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

from appliance.errors import AuditError

HEAD = "audit.head"
HEAD_BYTES = 256
_READS = 100


def head_block(seq: int, digest: str, file: str) -> bytes:
    """The head as written: JSON padded with spaces to ``HEAD_BYTES`` (a newline last)."""
    data = json.dumps({"seq": seq, "hash": digest, "file": file}).encode()
    if len(data) >= HEAD_BYTES:  # a file name is at most audit-<12 digits>.jsonl
        raise ValueError(f"audit head too long ({len(data)} bytes)")
    return data.ljust(HEAD_BYTES - 1) + b"\n"


def read_head(directory: Path) -> dict[str, Any] | None:
    path = directory / HEAD
    try:
        data = _settled(path)
    except FileNotFoundError:
        return None
    try:
        head = json.loads(data)
    except (OSError, ValueError) as error:
        raise AuditError(
            f"{path} cannot be read as JSON: {error}",
            hint="the head file was damaged; run appliance audit verify",
        ) from error
    if not isinstance(head, dict) or not isinstance(head.get("seq"), int):
        raise AuditError(f"{path} does not hold a seq")
    return head


def _settled(path: Path) -> bytes:
    """The head's bytes, read until two reads agree (the gateway may be rewriting it)."""
    data = path.read_bytes()
    for _ in range(_READS):
        again = path.read_bytes()
        if again == data:
            break
        data = again
    return data


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
