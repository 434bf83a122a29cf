"""audit.head checks itself (audit_head.py): a copy torn mid-write is reported as torn, never as
a chain cut off; a head from the release before the check still verifies, and says so."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from appliance.errors import AuditError
from appliance.gateway.audit import CURRENT, AuditLog
from appliance.gateway.audit_head import (
    HEAD,
    HEAD_BYTES,
    head_block,
    read_head,
    read_head_checked,
)
from appliance.gateway.audit_retention import ship
from appliance.gateway.audit_shipped import verify_shipped
from appliance.gateway.audit_verify import verify_log
from appliance.gateway.forward import FileSink, Forwarder


def fields(number: int) -> dict[str, object]:
    return {"request_id": f"req-{number}", "status": 200}


def two_heads(directory: Path) -> tuple[bytes, bytes]:
    """A log of 10 records, and the head blocks written after its 9th and its 10th record."""
    log = AuditLog(directory)
    log.open()
    for number in range(9):
        log.append(fields(number))
    old = (directory / HEAD).read_bytes()
    log.append(fields(9))
    log.close()
    return old, (directory / HEAD).read_bytes()


def test_the_head_carries_the_digest_of_its_other_fields(tmp_path: Path) -> None:
    two_heads(tmp_path)
    block = (tmp_path / HEAD).read_bytes()
    assert len(block) == HEAD_BYTES and block.endswith(b"\n")
    written = json.loads(block)
    rest = {key: value for key, value in written.items() if key != "check"}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()
    assert written["check"] == hashlib.sha256(canonical).hexdigest()
    assert read_head(tmp_path) == {"seq": 9, "hash": rest["hash"], "file": CURRENT}
    assert read_head_checked(tmp_path)[1] is True
    assert verify_log(tmp_path).head_checked is True


def test_every_tear_of_a_head_is_reported_as_torn(tmp_path: Path) -> None:
    """A copy of the head taken while the gateway rewrote it, cut at every byte: half of the
    head after the 10th record, half of the one before. Without the check some of these parsed
    as a head naming a record with another hash ("modified") or past the log ("cut off")."""
    old, new = two_heads(tmp_path / "live")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "live", copy)
    torn = 0
    for cut in range(1, HEAD_BYTES):
        block = new[:cut] + old[cut:]
        (copy / HEAD).write_bytes(block)
        if block in (old, new):
            verify_log(copy)  # a whole head, the one before or the new one: both verify
            continue
        torn += 1
        with pytest.raises(AuditError) as failed:
            verify_log(copy)
        assert failed.value.message == f"audit log {copy} fails verification: torn head"
        [problem] = failed.value.problems
        assert problem.path == HEAD
        assert problem.message.startswith(f"{copy / HEAD} is torn: ")
        assert "cut off" not in problem.message
        assert failed.value.hint is not None
        assert failed.value.hint.startswith(f"copy {HEAD} again")
    assert torn > 50  # the heads differ in their hash and check: most cuts tear them


def test_the_gateway_refuses_to_start_on_a_torn_head(tmp_path: Path) -> None:
    """A crash cannot tear the head (one block, one pwrite): a torn one was restored from a
    torn copy or edited, and the cut-off tail it guards against could no longer be seen. The
    gateway says so, tells how to go on, and changes nothing."""
    old, new = two_heads(tmp_path)
    torn = new[:100] + old[100:]
    (tmp_path / HEAD).write_bytes(torn)
    log_before = (tmp_path / CURRENT).read_bytes()
    with pytest.raises(AuditError) as refused:
        AuditLog(tmp_path).open()
    assert refused.value.message.startswith(
        f"audit log {tmp_path} cannot be continued: {tmp_path / HEAD} is torn: "
    )
    assert refused.value.hint is not None and f"move {HEAD} aside" in refused.value.hint
    assert (tmp_path / HEAD).read_bytes() == torn
    assert (tmp_path / CURRENT).read_bytes() == log_before
    # As the hint says: the head moved aside, the gateway starts and rebuilds it from the log.
    (tmp_path / HEAD).rename(tmp_path / "evidence.head")
    log = AuditLog(tmp_path)
    log.open()
    log.append(fields(10))
    log.close()
    assert verify_log(tmp_path).records == 11


def old_release_head(directory: Path) -> None:
    """Rewrite the head as the release before the check wrote it (no ``check``)."""
    head = json.loads((directory / HEAD).read_bytes())
    del head["check"]
    (directory / HEAD).write_bytes(json.dumps(head).encode().ljust(HEAD_BYTES - 1) + b"\n")


def test_a_head_of_the_previous_release_verifies_unchecked(tmp_path: Path) -> None:
    two_heads(tmp_path)
    old_release_head(tmp_path)
    report = verify_log(tmp_path)
    assert (report.records, report.head_checked) == (10, False)
    assert report.as_dict()["head_checked"] is False
    log = AuditLog(tmp_path)  # the upgraded gateway continues the chain, and checks its head
    log.open()
    log.close()
    assert verify_log(tmp_path).head_checked is True


def test_an_old_head_that_does_not_parse_is_torn_too(tmp_path: Path) -> None:
    two_heads(tmp_path)
    old_release_head(tmp_path)
    block = (tmp_path / HEAD).read_bytes()
    (tmp_path / HEAD).write_bytes(block[:30] + b"\x00" + block[31:])
    with pytest.raises(AuditError, match="torn head"):
        verify_log(tmp_path)


def test_a_shipped_directory_gets_a_checked_head(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", max_bytes=2048)
    log.open()
    for number in range(40):
        log.append({**fields(number), "pad": "x" * 100})
    log.close()
    shipped = ship(tmp_path / "audit", tmp_path / "copy")
    head, checked = read_head_checked(tmp_path / "copy")
    assert checked is True and head is not None
    assert head["seq"] == shipped["seq"]
    assert verify_log(tmp_path / "copy").head_checked is True


def test_an_empty_log_has_no_head_to_check(tmp_path: Path) -> None:
    assert verify_log(tmp_path).head_checked is None


def test_the_forwarder_waits_out_a_torn_head_and_its_copy_verifies(tmp_path: Path) -> None:
    """The forwarder carries the head in each message: from a torn one it sends nothing (and
    tries again, forward.Forwarder.run); with the head whole again it sends the records, and
    the shipped copy verifies against the head it carries."""
    old, new = two_heads(tmp_path / "audit")
    copy = tmp_path / "remote.log"
    forwarder = Forwarder(tmp_path / "audit", "file", FileSink(copy), "gw1")
    (tmp_path / "audit" / HEAD).write_bytes(new[:100] + old[100:])
    with pytest.raises(AuditError, match="is torn"):
        forwarder.step()
    assert not copy.exists() or copy.read_bytes() == b""
    (tmp_path / "audit" / HEAD).write_bytes(new)
    assert forwarder.step() == 10
    report = verify_shipped(copy)
    assert (report.records, report.last_seq, report.head_seq) == (10, 9, 9)


def test_the_longest_head_still_fits_its_block() -> None:
    """The check adds 77 bytes: the head of a 12-digit seq in a rotated file still fits the
    256-byte block that one pwrite rewrites."""
    block = head_block(10**12 - 1, "f" * 64, f"audit-{10**12 - 1:012d}.jsonl")
    assert len(block) == HEAD_BYTES
    assert len(block.rstrip()) < HEAD_BYTES - 40  # room left, not a near miss
