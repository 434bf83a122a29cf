"""Exhaustion and transient faults against the real gateway app on loopback: connections over
the limit, clients that send headers or a body too slowly, a full audit disk (a real file-size
limit on this process) during plain calls and in the middle of a stream. Each fault makes
calls fail while it lasts; the gateway serves again by itself after."""

from __future__ import annotations

import json
import resource
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.gateway.audit import CURRENT
from tests.fixtures.gateway import RunningGateway, gateway_in_thread, parse_reply

COMPLETION = json.dumps({"model": "stand-in", "prompt": "x", "max_tokens": 1}).encode()


def serves(gateway: RunningGateway) -> bool:
    reply = gateway.post("/v1/completions", COMPLETION, key=gateway.key)
    return reply is not None and reply.status == 200


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the gateway closed ``sock`` (sending ``trickle`` a byte at a time)."""
    started = time.monotonic()
    sock.settimeout(0.25)
    sent = 0
    while time.monotonic() - started < seconds:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def test_connections_over_the_limit_get_503_and_the_rest_are_served(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path, max_connections=3) as gateway:
        held = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as extra:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = parse_reply(extra.recv(4096))
            assert reply is not None and reply.status == 503
            assert reply.json()["error"]["code"] == "overloaded"
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert serves(gateway)
        metrics = gateway.get("/metrics").body.decode()
        assert "appliance_gateway_connections_refused_total 1" in metrics


def test_slow_headers_are_cut_off(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path, header_timeout_s=1.0) as gateway:
        headers = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            waited = closed_within(sock, 8, trickle=headers)
        assert waited is not None and waited < 3.5, waited
        with socket.create_connection(("127.0.0.1", gateway.port)) as idle:
            assert (closed_within(idle, 8) or 99) < 3.5
        assert serves(gateway)
        assert "appliance_gateway_slow_clients_total 1" in gateway.get("/metrics").body.decode()


def test_a_slow_body_gets_408_and_its_record(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path, body_timeout_s=1.0) as gateway:
        head = (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + gateway.key.encode()
            + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(head)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        reply = parse_reply(data)
        assert reply is not None and reply.status == 408
        record = gateway.record_of(reply)
        assert (record["status"], record["key_id"]) == (408, gateway.key_id)
        assert serves(gateway)


@contextmanager
def full_disk(audit_dir: Path) -> Iterator[None]:
    """No byte more fits in the audit log: this process may not grow any file past it (the
    kernel refuses the write, as a full filesystem would)."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ((audit_dir / CURRENT).stat().st_size, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, previous)


def wait_serving(gateway: RunningGateway) -> tuple[float, int]:
    """Seconds until a call is served again, and the calls it took."""
    started, calls = time.monotonic(), 1
    while not serves(gateway):
        assert time.monotonic() - started < 10, "the gateway did not serve again"
        time.sleep(0.1)
        calls += 1
    return time.monotonic() - started, calls


def test_a_full_audit_disk_means_503_while_it_lasts_then_service_by_itself(
    tmp_path: Path,
) -> None:
    with gateway_in_thread(tmp_path) as gateway:
        assert serves(gateway)
        with full_disk(gateway.audit_dir):
            for _ in range(3):
                reply = gateway.post("/v1/completions", COMPLETION, key=gateway.key)
                assert reply is not None and reply.status == 503
                assert reply.json()["error"]["code"] == "audit_unavailable"
            health = gateway.get("/health")
            assert health.status == 503 and health.json()["audit"].startswith("failed since")
            assert "appliance_gateway_audit_up 0" in gateway.get("/metrics").body.decode()
        seconds, calls = wait_serving(gateway)
        assert seconds < 3
        assert gateway.get("/health").json()["audit"] == "ok"
        records = gateway.records()
        outages = [r for r in records if r.get("event") == "audit_outage"]
        assert len(outages) == 1 and outages[0]["unrecorded_answers"] == 3
        # Every answer is accounted for: a record of its own, or counted by the outage record
        # (a call refused just after the fault, before the writer's retry, has its 503 record).
        statuses = [r["status"] for r in records if "event" not in r]
        assert statuses[0] == statuses[-1] == 200 and set(statuses) <= {200, 503}
        assert len(statuses) + outages[0]["unrecorded_answers"] == 1 + 3 + calls
        gateway.verify()


def test_a_stream_whose_record_fails_ends_with_an_error_not_done(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path) as gateway:
        body = json.dumps(
            {"model": "stand-in", "prompt": "x", "max_tokens": 3, "stream": True, "x_gate": True}
        ).encode()
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer " + gateway.key.encode() + b"\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            data = sock.recv(65536)
            while b'"w0 "' not in data:
                data += sock.recv(65536)
            with full_disk(gateway.audit_dir):
                release = urllib.request.Request(gateway.backend + "/_release", method="POST")  # noqa: S310
                urllib.request.urlopen(release, timeout=5).close()  # noqa: S310 - loopback
                while chunk := sock.recv(65536):
                    data += chunk
        reply = parse_reply(data)
        assert reply is not None and reply.status == 200
        assert b"[DONE]" not in reply.body
        assert reply.body.rstrip().endswith(b'"code": "audit_unavailable"}}')
        assert b'"w2 "' in reply.body  # the answer came, only its end was withheld
        wait_serving(gateway)
        outage = [r for r in gateway.records() if r.get("event") == "audit_outage"]
        assert outage and outage[0]["unrecorded_answers"] == 1
        gateway.verify()
