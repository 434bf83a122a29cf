"""Audit records forwarded to a real TLS syslog collector (tests/fixtures/syslog_collector):
in order, none lost while the collector is away, the shipped copy verifies, and the gateway
answers every call meanwhile."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.errors import GatewayConfigError
from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_retention import rotated
from appliance.gateway.audit_shipped import verify_shipped
from appliance.gateway.audit_verify import verify_log
from appliance.gateway.config import SyslogTarget, load_config
from appliance.gateway.forward import FileSink, Forwarder, SyslogSink, cursor_name
from appliance.gateway.syslog import parse_message
from tests.fixtures.gateway import gateway_config, gateway_in_thread
from tests.fixtures.servers import free_port
from tests.fixtures.syslog_collector import Collector, Pki, make_pki

CHAT = json.dumps({"model": "stand-in", "messages": [{"role": "user", "content": "hi"}]}).encode()


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextmanager
def forwarding(directory: Path, sink: SyslogSink | FileSink, name: str) -> Iterator[Forwarder]:
    forwarder = Forwarder(directory, name, sink, "gw1", retry_s=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        yield forwarder
    finally:
        stop.set()
        thread.join(30)


def head_seq(directory: Path) -> int:
    """The newest committed record's seq (calls' records and the gateway's own events)."""
    return int(json.loads((directory / "audit.head").read_text())["seq"])


def shipped_seqs(lines: list[bytes]) -> list[int]:
    seqs = []
    for line in lines:
        message = parse_message(line)
        assert message is not None, line
        seqs.append(json.loads(message.msg)["seq"])
    return seqs


def test_records_arrive_in_order_as_written_and_the_copy_verifies(tmp_path: Path, pki: Pki) -> None:
    collector = Collector(pki, tmp_path / "remote.log", free_port()).start()
    target = SyslogTarget(host="127.0.0.1", port=collector.port, ca_file=pki.ca)
    try:
        with (
            gateway_in_thread(tmp_path / "gw") as gateway,
            forwarding(gateway.audit_dir, SyslogSink(target), "syslog") as forwarder,
        ):
            for _ in range(25):
                reply = gateway.post("/v1/chat/completions", CHAT, key=gateway.key)
                assert reply is not None and reply.status == 200
            last = head_seq(gateway.audit_dir)
            wait_for(lambda: forwarder.cursor == last)
            local = gateway.records()  # the calls' and the gateway's own (key events)
        lines = collector.lines()
        assert shipped_seqs(lines) == [record["seq"] for record in local]
        assert [json.loads(parse_message(line).msg) for line in lines] == local  # type: ignore[union-attr]
        report = verify_shipped(tmp_path / "remote.log")
        assert (report.records, report.last_seq, report.duplicates) == (len(local), last, 0)
        assert sum(record.get("path") == "/v1/chat/completions" for record in local) == 25
        assert report.last_hash == local[-1]["hash"]
        cursor = json.loads((gateway.audit_dir / cursor_name("syslog")).read_text())
        assert cursor == {"seq": last, "hash": local[-1]["hash"]}
    finally:
        collector.close()


def test_a_collector_away_for_a_while_loses_nothing_and_blocks_no_call(
    tmp_path: Path, pki: Pki
) -> None:
    """Stopped while calls go on; the audit log rotates meanwhile and the gateway may prune
    (keep_rotated_bytes 0): nothing unforwarded is removed, everything arrives once it is back."""
    collector = Collector(pki, tmp_path / "remote.log", free_port()).start()
    target = SyslogTarget(host="127.0.0.1", port=collector.port, ca_file=pki.ca)
    audit = {
        "max_bytes": 4096,
        "keep_rotated_bytes": 0,
        "forward": {"syslog": target.model_dump(mode="json")},
    }
    try:
        with (
            gateway_in_thread(tmp_path / "gw", audit=audit) as gateway,
            forwarding(gateway.audit_dir, SyslogSink(target), "syslog") as forwarder,
        ):
            for _ in range(5):
                assert gateway.post("/v1/chat/completions", CHAT, key=gateway.key).status == 200  # type: ignore[union-attr]
            before = head_seq(gateway.audit_dir)
            wait_for(lambda: forwarder.cursor == before)
            collector.stop()
            answers = []
            started = time.monotonic()
            for _ in range(60):
                reply = gateway.post("/v1/chat/completions", CHAT, key=gateway.key)
                answers.append(None if reply is None else reply.status)
            away_s = time.monotonic() - started
            assert answers == [200] * 60
            assert len(rotated(gateway.audit_dir)) >= 3  # rotated while away, none pruned
            away = head_seq(gateway.audit_dir)
            assert away >= before + 60 and forwarder.cursor < away
            time.sleep(0.5)
            collector.start()
            wait_for(lambda: forwarder.cursor >= away)
            # Now forwarded, the rotated files may go: the next rotation prunes them.
            for _ in range(30):
                assert gateway.post("/v1/chat/completions", CHAT, key=gateway.key).status == 200  # type: ignore[union-attr]
            last = head_seq(gateway.audit_dir)
            wait_for(lambda: forwarder.cursor == last)
            assert verify_log(gateway.audit_dir).pruned_through is not None
        seqs = shipped_seqs(collector.lines())
        assert sorted(set(seqs)) == list(range(last + 1))  # every record arrived
        report = verify_shipped(tmp_path / "remote.log")
        assert report.records == last + 1 and report.duplicates == len(seqs) - last - 1
        assert away_s < 30  # the calls did not wait for the collector
    finally:
        collector.close()


def test_hostile_records_stay_one_message_each(tmp_path: Path, pki: Pki) -> None:
    log = AuditLog(tmp_path / "audit")
    log.open()
    hostile = [
        "line\nbreak\r\n<13>1 - forged - - - - injected",
        "\u202eevil bidi\u202c\u2066isolate\u2069",
        "nul\x00 del\x7f c1\x85 ls\u2028 ps\u2029 esc\x1b[31m",
        '"] [audit@32473 seq="0"] quote and bracket',
        "x" * 200_000,
        "\ufeffbom and \U0001f600 emoji",
    ]
    for value in hostile:
        log.append({"event": "call", "model": value, "error": value})
    log.close()
    collector = Collector(pki, tmp_path / "remote.log", free_port()).start()
    target = SyslogTarget(host="127.0.0.1", port=collector.port, ca_file=pki.ca)
    try:
        with forwarding(tmp_path / "audit", SyslogSink(target), "syslog") as forwarder:
            wait_for(lambda: forwarder.cursor == len(hostile) - 1)
        lines = collector.lines()
        assert collector.messages == len(lines) == len(hostile)
        assert collector.refused == []
        for line, value in zip(lines, hostile, strict=True):
            assert all(0x20 <= byte < 0x7F for byte in line), "only printable ASCII on the wire"
            record = json.loads(parse_message(line).msg)  # type: ignore[union-attr]
            assert record.get("model", "omitted") == (value if len(value) < 60000 else "omitted")
        # The 200 kB record went as its chain links only: collectors cut long messages.
        assert len(lines[4]) < 1024 and b'content="omitted" bytes="400' in lines[4]
        report = verify_shipped(tmp_path / "remote.log")
        assert (report.records, report.omitted) == (len(hostile), [4])
    finally:
        collector.close()


@pytest.mark.parametrize("client_cert", [True, False])
def test_a_collector_that_wants_a_client_certificate(
    tmp_path: Path, pki: Pki, client_cert: bool
) -> None:
    log = AuditLog(tmp_path / "audit")
    log.open()
    log.append({"event": "call"})
    log.close()
    collector = Collector(pki, tmp_path / "remote.log", free_port(), require_client_cert=True)
    collector.start()
    cert = {"cert_file": pki.client_cert, "key_file": pki.client_key} if client_cert else {}
    target = SyslogTarget(host="127.0.0.1", port=collector.port, ca_file=pki.ca, **cert)
    forwarder = Forwarder(tmp_path / "audit", "syslog", SyslogSink(target), "gw1")
    try:
        if client_cert:
            assert forwarder.step() == 1
            assert forwarder.cursor == 0
        else:
            with pytest.raises(OSError):
                forwarder.step()
            assert forwarder.cursor == -1
            assert not (tmp_path / "audit" / cursor_name("syslog")).exists()
    finally:
        forwarder.sink.close()
        collector.close()


def test_a_collector_the_ca_did_not_sign_gets_nothing(tmp_path: Path, pki: Pki) -> None:
    log = AuditLog(tmp_path / "audit")
    log.open()
    log.append({"event": "call"})
    log.close()
    other = make_pki(tmp_path / "other")
    collector = Collector(other, tmp_path / "remote.log", free_port()).start()
    target = SyslogTarget(host="127.0.0.1", port=collector.port, ca_file=pki.ca)
    forwarder = Forwarder(tmp_path / "audit", "syslog", SyslogSink(target), "gw1")
    try:
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            forwarder.step()
        assert collector.messages == 0 and forwarder.cursor == -1
    finally:
        collector.close()


def test_the_file_target_is_a_copy_that_verifies(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", max_bytes=4096)
    log.open()
    for number in range(40):
        log.append({"event": "call", "request_id": f"r{number}", "pad": "p" * 200})
    forwarder = Forwarder(tmp_path / "audit", "file", FileSink(tmp_path / "siem.log"), "gw1")
    assert forwarder.step() == 40
    # The SIEM side rotates its file; the next records go to a new one.
    (tmp_path / "siem.log").rename(tmp_path / "siem.log.1")
    log.append({"event": "call", "request_id": "r40"})
    log.close()
    assert forwarder.step() == 1
    assert forwarder.step() == 0
    assert verify_shipped(tmp_path / "siem.log.1").records == 40
    assert verify_shipped(tmp_path / "siem.log").first_seq == 40


def test_the_forwarder_process_ships_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``appliance-audit-forward`` as the unit runs it, with the gateway's config file."""
    config = gateway_config(tmp_path, "http://127.0.0.1:9")
    document = config.model_dump(mode="json")
    document["audit"]["forward"] = {"file": str(tmp_path / "siem.log"), "hostname": "gw9"}
    (tmp_path / "config.json").write_text(json.dumps(document))
    log = AuditLog(config.audit.dir)
    log.open()
    log.append({"event": "call", "request_id": "before"})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.gateway.forward",
            "--config",
            str(tmp_path / "config.json"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log.append({"event": "call", "request_id": "after"})
        wait_for(
            lambda: (
                len((tmp_path / "siem.log").read_bytes().splitlines()) == 2
                if (tmp_path / "siem.log").exists()
                else False
            )
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        log.close()
    assert process.returncode == 0, stderr
    assert "forwarding file from" in stderr
    report = verify_shipped(tmp_path / "siem.log")
    assert (report.host, report.records) == ("gw9", 2)


@pytest.mark.parametrize(
    ("forward", "message"),
    [
        ({}, "audit.forward: Value error, set syslog, file or both: where the records go"),
        (
            {"syslog": {"host": "logs.site", "ca_file": "/ca.pem", "cert_file": "/c.pem"}},
            "audit.forward.syslog: Value error, cert_file and key_file go together",
        ),
        ({"syslog": {"host": "logs.site"}}, "audit.forward.syslog.ca_file: Field required"),
        ({"file": "/x", "facility": 24}, "audit.forward.facility: Input should be less than"),
    ],
)
def test_forward_settings_are_checked(
    tmp_path: Path, forward: dict[str, object], message: str
) -> None:
    document = gateway_config(tmp_path, "http://127.0.0.1:9").model_dump(mode="json")
    document["audit"]["forward"] = forward
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(GatewayConfigError) as raised:
        load_config(tmp_path / "config.json")
    assert raised.value.problems[0].render().startswith(message)


def test_a_file_removed_under_the_gateway_shows_as_a_gap_in_the_copy(tmp_path: Path) -> None:
    """audit.jsonl removed before all of it was forwarded: the records it held are gone, the
    gap record says which, and the shipped copy verifies with the gap listed."""
    log = AuditLog(tmp_path / "audit")
    log.open()
    for number in range(6):
        log.append({"event": "call", "request_id": f"r{number}"})
    forwarder = Forwarder(tmp_path / "audit", "file", FileSink(tmp_path / "copy.log"), "gw1")
    assert forwarder.step() == 6
    for number in range(6, 10):
        log.append({"event": "call", "request_id": f"r{number}"})
    (tmp_path / "audit" / "audit.jsonl").unlink()
    log.append({"event": "call", "request_id": "r-after"})
    log.close()
    shutil.copy(tmp_path / "copy.log", tmp_path / "copy2.log")
    # A forwarder that still has the removed file open ships what it held: no gap.
    assert forwarder.step() == 6
    report = verify_shipped(tmp_path / "copy.log")
    assert (report.records, report.last_seq, report.gaps) == (12, 11, [])
    # One started after the removal cannot: the gap record says which records are gone.
    restarted = Forwarder(tmp_path / "audit", "file", FileSink(tmp_path / "copy2.log"), "gw1")
    restarted.cursor = 5
    assert restarted.step() == 2  # the gap record and the call after it
    report = verify_shipped(tmp_path / "copy2.log")
    assert report.gaps == [{"first_seq": 6, "last_seq": 9, "line": 7}]
    assert (report.records, report.last_seq) == (8, 11)


def test_a_new_chain_below_the_cursor_is_forwarded_from_its_start(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit")
    log.open()
    for number in range(5):
        log.append({"event": "call", "request_id": f"old{number}"})
    log.close()
    forwarder = Forwarder(tmp_path / "audit", "file", FileSink(tmp_path / "old.log"), "gw1")
    assert forwarder.step() == 5
    for path in (tmp_path / "audit").glob("audit*"):
        if path.name != cursor_name("file"):
            path.unlink()
    log = AuditLog(tmp_path / "audit")
    log.open()
    log.append({"event": "call", "request_id": "new0"})
    log.close()
    forwarder.sink = FileSink(tmp_path / "new.log")
    assert forwarder.step() == 1
    assert verify_shipped(tmp_path / "new.log").first_seq == 0
