"""``appliance audit ship`` and ``audit verify`` on a shipped and pruned log: exact output and
exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_retention import prune, rotated
from appliance.gateway.forward import FileSink, Forwarder
from appliance.gateway.record import CLIENT_ID_LIMIT, clean
from tests.fixtures.cli import run_cli


def fill(directory: Path, start: int, count: int) -> None:
    log = AuditLog(directory, max_bytes=4096)
    log.open()
    for number in range(start, start + count):
        log.append({"request_id": f"req-{number}", "status": 200, "pad": "x" * 100})
    log.close()


def test_ship_then_verify_the_pruned_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    audit, target = tmp_path / "audit", tmp_path / "shipped"
    fill(audit, 0, 60)
    files = len(rotated(audit))
    code, out, err = run_cli(capsys, "audit", "ship", "--dir", str(audit), "--to", str(target))
    last = json.loads((audit / "audit.shipped").read_text())["seq"]
    assert (code, err) == (0, "")
    assert out == f"{audit}: {files} file(s) copied to {target}, shipped through seq {last}\n"
    # Nothing new: nothing copied, the mark stays.
    code, out, _ = run_cli(
        capsys, "--json", "audit", "ship", "--dir", str(audit), "--to", str(target)
    )
    assert (code, json.loads(out)["shipped"], json.loads(out)["seq"]) == (0, 0, last)
    fill(audit, 60, 10)
    assert prune(audit, keep_rotated_bytes=0) == files
    code, out, err = run_cli(capsys, "audit", "verify", "--dir", str(audit))
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"records through seq {last} were shipped and removed here"
    code, out, _ = run_cli(capsys, "--json", "audit", "verify", "--dir", str(target))
    assert (code, json.loads(out)["last_seq"], json.loads(out)["pruned_through"]) == (0, last, None)


def test_ship_with_nothing_rotated(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fill(tmp_path / "audit", 0, 2)
    code, out, _ = run_cli(
        capsys, "audit", "ship", "--dir", str(tmp_path / "audit"), "--to", str(tmp_path / "t")
    )
    assert (code, out) == (0, f"{tmp_path / 'audit'}: 0 file(s) copied to {tmp_path / 't'}\n")


def test_verify_a_shipped_copy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fill(tmp_path / "audit", 0, 5)
    copy = tmp_path / "remote.log"
    Forwarder(tmp_path / "audit", "file", FileSink(copy), "gw1").step()
    code, out, err = run_cli(capsys, "audit", "verify", "--shipped", str(copy))
    assert (code, err) == (0, "")
    assert out == f"{copy}: shipped audit copy OK, 5 record(s) from host gw1, seq 0..4\n"
    fill(tmp_path / "audit", 5, 2)  # two records not forwarded yet
    code, out, _ = run_cli(capsys, "audit", "verify", "--dir", str(tmp_path / "audit"))
    assert out.splitlines()[-1] == "forwarded to file through seq 4 (2 record(s) to go)"
    lines = copy.read_bytes().splitlines(keepends=True)
    copy.write_bytes(b"".join(lines[:2] + lines[3:]))
    code, out, err = run_cli(capsys, "audit", "verify", "--shipped", str(copy))
    assert code == 34
    assert err.splitlines()[0] == f"Error: shipped audit copy {copy} fails verification: removed"
    assert (
        err.splitlines()[1] == "  remote.log (line 3): seq jumps from 1 to 3: 1 record(s) missing"
    )
    code, _, err = run_cli(
        capsys, "audit", "verify", "--shipped", str(copy), "--anchor", f"1:{'a' * 64}"
    )
    assert code == 2 and "--anchor checks the audit directory, not --shipped" in err


def test_usage_shows_a_hostile_model_name_without_its_escapes() -> None:
    from appliance.cli.audit import _printable

    assert _printable("tiny\x1b[2J\u202eevil") == "tiny\\x1b[2J\\x202eevil"
    assert _printable("llama-3.1:8b") == "llama-3.1:8b"


def test_show_finds_a_call_by_the_gateways_id_or_by_the_clients_own(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    long_id = "trace-" + "x" * 300
    log = AuditLog(tmp_path, max_bytes=1024)
    log.open()
    calls = [
        ("gw-1", "trace-7f3a"),
        ("gw-2", None),
        ("gw-3", "trace-7f3a"),  # the client's retry, with its id again
        ("gw-4", 'caf\u00e9 "quoted"'),
        ("gw-5", clean(long_id, CLIENT_ID_LIMIT)),  # as the gateway records a long id
    ]
    for gateway_id, own in calls:
        log.append({"request_id": gateway_id, "client_request_id": own, "pad": "x" * 300})
    log.close()
    assert len(rotated(tmp_path)) >= 1  # the search crosses rotated files

    def shown(request_id: str) -> list[str]:
        code, out, err = run_cli(
            capsys, "--json", "audit", "show", "--dir", str(tmp_path), "--request-id", request_id
        )
        assert (code, err) == (0, "")
        return [r["request_id"] for r in json.loads(out)["records"]]

    assert shown("gw-2") == ["gw-2"]
    assert shown("trace-7f3a") == ["gw-1", "gw-3"]
    assert shown('caf\u00e9 "quoted"') == ["gw-4"]
    assert shown(long_id) == ["gw-5"]
    assert shown("gw-4") == ["gw-4"]
    code, out, err = run_cli(
        capsys, "audit", "show", "--dir", str(tmp_path), "--request-id", "trace-7f3"
    )
    assert (code, out) == (34, "")
    assert err == (
        f"Error: no record of request trace-7f3 in {tmp_path}\n"
        "Hint: give the X-Request-Id header of the gateway's answer, or the id the client sent "
        "as its own\n"
    )


def test_verify_says_when_the_head_has_no_check_and_when_it_is_torn(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fill(tmp_path, 0, 3)
    head = (tmp_path / "audit.head").read_bytes()
    written = json.loads(head)
    del written["check"]  # as the release before the check wrote it
    (tmp_path / "audit.head").write_bytes(json.dumps(written).encode().ljust(255) + b"\n")
    code, out, err = run_cli(capsys, "audit", "verify", "--dir", str(tmp_path))
    assert (code, err) == (0, "")
    assert out.splitlines()[1] == (
        "audit.head has no check (an earlier release wrote it): accepted unchecked; the gateway "
        "writes it with one when it starts"
    )
    code, out, _ = run_cli(capsys, "--json", "audit", "verify", "--dir", str(tmp_path))
    assert (code, json.loads(out)["head_checked"]) == (0, False)
    # A byte of the hash from another head, as a copy taken mid-write can hold.
    other = b"0" if head[20:21] != b"0" else b"1"
    (tmp_path / "audit.head").write_bytes(head[:20] + other + head[21:])
    code, out, err = run_cli(capsys, "audit", "verify", "--dir", str(tmp_path))
    assert (code, out) == (34, "")
    lines = err.splitlines()
    assert lines[0] == f"Error: audit log {tmp_path} fails verification: torn head"
    assert lines[1].startswith(
        f"  audit.head: {tmp_path / 'audit.head'} is torn: its content does not match its check"
    )
    assert lines[-1].startswith("Hint: copy audit.head again from the gateway's audit directory")
