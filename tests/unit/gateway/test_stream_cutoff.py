"""A stream the client leaves: charged for what it was sent, and recorded once, against the real
gateway app on loopback (tests/fixtures/gateway.py) in front of the stand-in backend."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from appliance.gateway.keys import Limits, add_key
from appliance.gateway.stream import UsageScanner
from tests.fixtures.gateway import RunningGateway, gateway_in_thread


def stream_request(gateway: RunningGateway, key: str, extra: dict[str, Any]) -> bytes:
    body = json.dumps(
        {
            "model": "stand-in",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 8,
            "stream": True,
            **extra,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def stream_records(gateway: RunningGateway, count: int) -> list[dict[str, Any]]:
    """The records of streamed calls, once ``count`` of them are written."""
    deadline = time.monotonic() + 15
    while True:
        records = [r for r in gateway.calls() if r["stream"]]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def release(gateway: RunningGateway) -> None:
    asked = urllib.request.Request(gateway.backend + "/_release", method="POST")  # noqa: S310
    urllib.request.urlopen(asked, timeout=5).close()  # noqa: S310 - loopback


def test_a_client_that_leaves_mid_stream_is_charged_what_it_was_sent(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path) as gateway:
        # tpm 1: a call charged 2 tokens or more leaves the key in debt, so the next is refused.
        key, _ = add_key(tmp_path / "keys.json", "metered", ["*"], limits=Limits(tpm=1))
        time.sleep(0.6)  # the keys file is followed every 0.25 s (key_events.py)
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as client:
            # The stand-in sends its first token, then waits for /_release; the rest comes a
            # token every 50 ms, so the gateway relays token by token.
            client.sendall(stream_request(gateway, key, {"x_gate": True, "x_token_delay": 0.05}))
            seen = b""
            while b"w0 " not in seen:
                seen += client.recv(65536)
            release(gateway)
            while b"w1 " not in seen:
                seen += client.recv(65536)
        [record] = stream_records(gateway, 1)
        assert (record["status"], record["error"]) == (200, "client disconnected")
        sent = sum(seen.count(f"w{n} ".encode()) for n in range(8))
        # Charged the tokens relayed: those the client read (a token in flight may count too).
        assert record["completion_tokens"] is not None
        assert 2 <= sent <= record["completion_tokens"] <= sent + 1 < 8
        assert record["prompt_tokens"] is None  # only the runtime's usage event says that
        # ... but the prompt is charged by its size: leaving early does not make it free.
        body = stream_request(gateway, key, {"x_gate": True, "x_token_delay": 0.05})
        size = len(body.split(b"\r\n\r\n", 1)[1])
        assert record["prompt_tokens_estimated"] == -(-size // 4)
        refused = gateway.post("/v1/completions", b'{"model": "stand-in", "prompt": "x"}', key=key)
        assert refused is not None and refused.status == 429, refused
        assert gateway.record_of(refused)["error"].startswith("rate_limit_exceeded: tpm")


def test_a_client_gone_before_the_stream_starts_has_one_record_saying_so(
    tmp_path: Path,
) -> None:
    with gateway_in_thread(tmp_path) as gateway:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as client:
            client.sendall(stream_request(gateway, gateway.key, {"x_delay": 0.4}))
            time.sleep(0.1)  # the call is at the backend, which answers in 0.4 s
        [record] = stream_records(gateway, 1)
        time.sleep(0.3)  # a second record would be written by now
        assert len([r for r in gateway.calls() if r["stream"]]) == 1
        assert (record["status"], record["error"]) == (200, "client disconnected")
        assert record["completion_tokens"] == 0  # nothing reached the client
        assert record["prompt_tokens_estimated"] > 0  # the prompt reached the backend


def test_the_scanner_counts_generated_events_and_parses_only_usage_objects() -> None:
    scanner = UsageScanner()
    events = [
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}],"usage":null}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n',
        b'data: {"choices": [{"text": "b", "finish_reason": null}], "usage": null}\n\n',
        b'data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{"}}]}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\n',
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    for at in range(0, len(stream), 7):  # cut anywhere: lines are whole only when they end
        scanner.feed(stream[at : at + 7])
    assert scanner.generated == 3
    assert scanner.usage == {"prompt_tokens": 3, "completion_tokens": 3}


def test_a_client_that_leaves_a_whole_answer_is_charged_its_prompt(tmp_path: Path) -> None:
    """The client of a whole (not streamed) answer leaves while the backend generates: the
    call is cut (499) and, as a stream cut off, charged its prompt by size: else a key under a
    tokens-per-minute limit keeps the backend busy for free by leaving before each answer."""
    with gateway_in_thread(tmp_path) as gateway:
        key, _ = add_key(tmp_path / "keys.json", "metered", ["*"], limits=Limits(tpm=1))
        time.sleep(0.6)  # the keys file is followed every 0.25 s (key_events.py)
        request = stream_request(gateway, key, {"stream": False, "x_delay": 3})
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as client:
            client.sendall(request)
            time.sleep(0.3)  # the call is at the backend, which answers in 3 s
        deadline = time.monotonic() + 10
        while not gateway.calls() and time.monotonic() < deadline:
            time.sleep(0.05)
        [record] = gateway.calls()
        assert (record["status"], record["error"]) == (499, "client disconnected")
        size = len(request.split(b"\r\n\r\n", 1)[1])
        assert record["prompt_tokens_estimated"] == -(-size // 4)
        refused = gateway.post("/v1/completions", b'{"model": "stand-in", "prompt": "x"}', key=key)
        assert refused is not None and refused.status == 429, refused


def test_a_client_that_stops_reading_a_stream_is_cut_off(tmp_path: Path) -> None:
    """A client that keeps its connection but reads nothing (its TCP window shut) held the
    stream, and the runtime's generation behind it, with no deadline and no record: cut off
    once it took nothing for ``body_timeout_s``, recorded, charged what it was sent."""
    with gateway_in_thread(tmp_path, body_timeout_s=1.0) as gateway:
        request = stream_request(gateway, gateway.key, {"max_tokens": 400_000})
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", gateway.port))
            client.sendall(request)
            [record] = stream_records(gateway, 1)  # within 15 s, while still connected
        assert record["status"] == 200
        assert record["error"] == "client too slow: took none of the answer for 1.0 s"
        assert 0 < record["completion_tokens"] < 400_000


def test_a_client_that_stops_reading_a_whole_answer_is_cut_off(tmp_path: Path) -> None:
    """The same for a whole answer: its record is written before it goes out, but a client
    that takes none of it kept the connection (and its key's concurrency slot) for ever."""
    with gateway_in_thread(tmp_path, body_timeout_s=1.0) as gateway:
        request = stream_request(gateway, gateway.key, {"stream": False, "max_tokens": 2_000_000})
        request = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", gateway.port))
            client.sendall(request)
            deadline = time.monotonic() + 20
            while not gateway.calls() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(3)  # past the deadline, reading nothing
            client.settimeout(10)
            received = 0
            try:
                while chunk := client.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        assert received < 16_000_000  # the whole answer (8 bytes a token) never came
        assert gateway.calls()[0]["status"] == 200  # recorded as answered, as before
