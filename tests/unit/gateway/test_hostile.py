"""Hostile requests, one class each, against the real gateway app on loopback: whatever a client
sends, the call is refused with a 4xx or served, its record is written, and the gateway still
serves the next caller (the property tests in test_properties.py try hundreds of each)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.gateway import RunningGateway, gateway_in_thread


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
    assert gateway.verify().records == 2
