"""audit.head rewritten in place (audit_head.py): a crash between writes, a half-written block,
and readers of the live directory."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance.errors import AuditError
from appliance.gateway.audit import CURRENT, AuditLog
from appliance.gateway.audit_head import HEAD, HEAD_BYTES, head_block, read_head
from appliance.gateway.audit_verify import verify_log

ROOT = Path(__file__).resolve().parents[3]


def fields(number: int) -> dict[str, object]:
    return {"request_id": f"req-{number}", "status": 200}


def test_the_head_is_rewritten_in_place_as_one_block(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.open()
    log.append(fields(0))
    inode = (tmp_path / HEAD).stat().st_ino
    for number in range(1, 5):
        log.append(fields(number))
    log.close()
    assert (tmp_path / HEAD).stat().st_ino == inode
    assert (tmp_path / HEAD).stat().st_size == HEAD_BYTES
    assert read_head(tmp_path) == {"seq": 4, "hash": log.prev, "file": CURRENT}
    assert verify_log(tmp_path).records == 5


def test_a_removed_head_is_created_again(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.open()
    log.append(fields(0))
    (tmp_path / HEAD).unlink()
    log.append(fields(1))
    log.close()
    assert read_head(tmp_path) == {"seq": 1, "hash": log.prev, "file": CURRENT}


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from appliance.gateway.audit import AuditLog
    log = AuditLog(Path(sys.argv[1]))
    log.open()
    print("open", flush=True)
    number = 0
    while True:
        log.append_many([{"request_id": f"req-{number + i}", "status": 200} for i in range(3)])
        number += 3
    """
)


def test_a_crash_between_writes_still_verifies(tmp_path: Path) -> None:
    """Killed (SIGKILL) at arbitrary points while writing batches, three times over: each time
    the log verifies and the next gateway continues the one chain."""
    total = 0
    for delay in (0.02, 0.11, 0.23):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert writer.stdout is not None and writer.stdout.readline() == b"open\n"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        report = verify_log(tmp_path)
        assert report.records > total
        assert report.beyond_head <= 3  # at most the batch written before its head was
        total = report.records
    log = AuditLog(tmp_path)
    log.open()
    assert log.seq == total
    log.append(fields(0))
    log.close()
    assert verify_log(tmp_path).records == total + 1


def test_a_half_written_head_is_detected(tmp_path: Path) -> None:
    """A block cut off part-way (the old head's bytes after the new one's first half): the
    seq and hash no longer belong together, which verify and the next gateway both refuse."""
    log = AuditLog(tmp_path)
    log.open()
    for number in range(4):
        log.append(fields(number))
    log.close()
    old = (tmp_path / HEAD).read_bytes()
    newer = head_block(5, "e" * 64, CURRENT)  # what the gateway was writing when it died
    (tmp_path / HEAD).write_bytes(newer[:40] + old[40:])
    with pytest.raises(AuditError, match="head"):
        verify_log(tmp_path)
    with pytest.raises(AuditError, match="cannot be continued"):
        AuditLog(tmp_path).open()


_REWRITER = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    from appliance.gateway.audit_head import HeadFile
    head = HeadFile(Path(sys.argv[1]), fsync=False)
    seq = 0
    while True:
        head.write(seq, hashlib.sha256(str(seq).encode()).hexdigest(), "audit.jsonl")
        seq += 1
    """
)


def test_readers_never_take_a_head_being_rewritten(tmp_path: Path) -> None:
    (tmp_path / HEAD).write_bytes(head_block(0, hashlib.sha256(b"0").hexdigest(), CURRENT))
    writer = subprocess.Popen([sys.executable, "-c", _REWRITER, str(tmp_path)], cwd=ROOT)
    try:
        seen = set()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            head = read_head(tmp_path)
            assert head is not None
            assert head["hash"] == hashlib.sha256(str(head["seq"]).encode()).hexdigest()
            seen.add(head["seq"])
        assert len(seen) > 10  # the writer did move it meanwhile
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert json.loads((tmp_path / HEAD).read_bytes())["file"] == CURRENT


def test_a_failed_flush_of_the_head_puts_the_committed_head_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's records are taken back off the log when its head cannot be flushed: the
    rewritten block, already what readers see, is put back. Left naming them, the head named a
    record the log no longer held: verification said truncated and the gateway would not start."""
    log = AuditLog(tmp_path, fsync=True)
    log.open()
    log.append(fields(0))
    log.append(fields(1))
    committed = read_head(tmp_path)

    def failing(_fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError):
        log.append(fields(2))
    monkeypatch.undo()
    assert read_head(tmp_path) == committed
    log.append(fields(3))  # the chain goes on from the committed record
    log.close()
    assert verify_log(tmp_path).records == 3
    again = AuditLog(tmp_path, fsync=True)
    again.open()
    again.close()
