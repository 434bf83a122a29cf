"""Hostile requests, one class each, against the real gateway app on loopback: whatever a client
sends, the call is refused with a 4xx or served, its record is written, and the gateway still
serves the next caller (the property tests in test_properties.py try hundreds of each)."""

from __future__ import annotations

import gzip
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.gateway import Reply, RunningGateway, gateway_in_thread


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with gateway_in_thread(tmp_path) as running:
        yield running


def still_serves(gateway: RunningGateway) -> None:
    body = json.dumps({"model": "stand-in", "prompt": "x", "max_tokens": 1}).encode()
    reply = gateway.post("/v1/completions", body, key=gateway.key)
    assert reply is not None and reply.status == 200, reply
    assert gateway.record_of(reply)["status"] == 200


def test_a_lone_surrogate_without_a_key_does_not_stop_the_audit_log(
    gateway: RunningGateway,
) -> None:
    """The worst finding: one keyless call whose model is a lone surrogate made every record
    after it fail to serialise, and the gateway answered 503 to everyone until restarted."""
    reply = gateway.post("/v1/completions", b'{"model": "\\ud800", "prompt": "x"}')
    assert reply is not None and reply.status == 401
    record = gateway.record_of(reply)
    assert record["status"] == 401 and record["model"] == "\\ud800"
    still_serves(gateway)
    # The tester key's creation (recorded at the gateway's start), then the two calls.
    assert gateway.verify().records == 3
    assert [r.get("event") for r in gateway.records()] == ["key_created", None, None]


def refused_and_audited(
    gateway: RunningGateway, reply: Reply | None, status: int, code: str
) -> None:
    assert reply is not None
    assert (reply.status, reply.json()["error"]["code"]) == (status, code), reply.body[:300]
    record = gateway.record_of(reply)
    assert record["status"] == status and record["error"].startswith(code)
    assert len(json.dumps(record)) < 4096


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "stand-in", "model": "other", "prompt": "x"}', "duplicate_key"),
        (b'{"model": "stand-in", "MODEL": "other", "prompt": "x"}', "ambiguous_key"),
        (b'{"model": "stand-in", "Model": "stand-in", "prompt": "x"}', "ambiguous_key"),
        ('{"model": "stand-in", "\uff4dodel": "other"}'.encode(), "ambiguous_key"),
        (b'{"Model": "stand-in", "prompt": "x"}', "ambiguous_key"),
        (b'{"model": "stand-in", "options": {"a": 1, "a": 2}}', "duplicate_key"),
        (b'{"model": "stand-in", "temperature": NaN}', "invalid_json"),
        (b'{"model": "stand-in", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
        (b'{"model": "stand-in", "x": ' + b"[" * 70 + b"]" * 70 + b"}", "invalid_json"),
        (b'{"model": "stand-in", "prompt": "\xff\xfe"}', "invalid_json"),
        (b"\xef\xbb\xbf" + b'{"model": "stand-in"}', "invalid_json"),
        (b'["model", "stand-in"]', "invalid_json"),
        (b'{"model": "stand-in", "n": 1' + b"0" * 5000 + b"}", "invalid_json"),
    ],
)
def test_ambiguous_or_broken_bodies_are_refused_with_400(
    gateway: RunningGateway, body: bytes, code: str
) -> None:
    reply = gateway.post("/v1/completions", body, key=gateway.key)
    refused_and_audited(gateway, reply, 400, code)
    still_serves(gateway)


def test_the_backend_gets_the_canonical_body_it_was_authorised_for(
    gateway: RunningGateway,
) -> None:
    body = b'{"model":"stand-in",  "prompt":"\\u00e9 x", "max_tokens":1, "x_extra":{"b":[1,2]}}'
    reply = gateway.post("/v1/completions", body, key=gateway.key)
    assert reply is not None and reply.status == 200
    with urllib.request.urlopen(gateway.backend + "/_last", timeout=5) as answer:  # noqa: S310
        seen = answer.read()
    assert json.loads(seen) == {**json.loads(body), "model": "sb"}


def test_huge_values_are_bounded_in_the_record(gateway: RunningGateway) -> None:
    model = "m" * 60_000
    reply = gateway.post("/v1/completions", json.dumps({"model": model}).encode(), gateway.key)
    refused_and_audited(gateway, reply, 404, "model_not_found")
    record = gateway.record_of(reply)  # type: ignore[arg-type]
    assert record["model"].startswith("m" * 128 + "...[60000 chars, sha256:")
    reply = gateway.raw(
        b"GET /" + b"p" * 8000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply is not None and reply.status == 401
    assert len(gateway.record_of(reply)["path"]) < 400
    still_serves(gateway)


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer apl_\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8_x",
        b"Authorization: Bearer \xed\xa0\x80",
        b"Authorization: Bearer apl_\xd9\xa0\xd9\xa1\xd9\xa2\xd9\xa3_x",  # Arabic-Indic digits
        b"X-Odd: \x01\x02",
        b"Authorization: Bearer a\x00b",
        b"X-Long: " + b"h" * 20_000,
        b"Bad Header Name: x",
        b"Expect: something-else",  # aiohttp itself would answer 417, unaudited
        b"Expect: 100-continue",
        b"Content-Encoding: gzip",  # not inflated: the body is not JSON then
    ],
)
def test_odd_header_bytes_are_refused_and_audited(gateway: RunningGateway, header: bytes) -> None:
    request = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header
    body = b'{"model": "stand-in", "prompt": "x"}'
    reply = gateway.raw(request + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert reply is not None and 400 <= reply.status < 500
    record = gateway.record_of(reply)
    assert record["status"] == reply.status and record["key_id"] is None
    still_serves(gateway)
    gateway.verify()


def test_headers_aiohttp_would_act_on_reach_the_gateway_and_its_log(
    gateway: RunningGateway,
) -> None:
    body = gzip.compress(b'{"model": "stand-in", "prompt": "x", "max_tokens": 1}')
    reply = gateway.post(
        "/v1/completions", body, key=gateway.key, headers=[(b"Content-Encoding", b"gzip")]
    )
    refused_and_audited(gateway, reply, 400, "invalid_json")
    plain = b'{"model": "stand-in", "prompt": "x", "max_tokens": 1}'
    reply = gateway.post("/v1/completions", plain, key=gateway.key, headers=[(b"Expect", b"x")])
    assert reply is not None and reply.status == 200
    assert gateway.record_of(reply)["status"] == 200


def test_a_client_that_leaves_mid_body_is_a_499_not_a_failure_of_ours(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp fails the body's read when the client goes: recorded as the client's doing, with
    no traceback in the journal (each such request logged one, and counted as a gateway 500)."""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.key}"
        "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as client:
        client.sendall(head.encode() + b'{"model"')
        time.sleep(0.3)  # the handler is reading the body
    deadline = time.monotonic() + 10
    while not gateway.calls() and time.monotonic() < deadline:
        time.sleep(0.05)
    [record] = gateway.calls()
    assert (record["status"], record["error"]) == (499, "client disconnected")
    assert not [r for r in caplog.records if r.exc_info]
    still_serves(gateway)
