"""Property tests (hypothesis): hundreds of generated request bodies and headers against the
real gateway app on 127.0.0.1, in front of the stand-in backend. For every one:

- the gateway answers (it never drops a call without an answer),
- the answer is a 4xx refusal or what the backend said, and either way the call's record is in
  the log, with the answer's status, and at most a few KiB,
- the gateway still serves a valid call right after,
- ``verify_log`` passes.

The examples are kept modest (``max_examples``) so the suite takes seconds on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.gateway import Reply, RunningGateway, gateway_in_thread

RECORD_LIMIT = 4096
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written into the checkout
    # One gateway per test, shared by its examples: that is the point (it must keep serving).
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with gateway_in_thread(tmp_path) as running:
        yield running
        report = running.verify()
        assert report.records == len(running.records()) and not report.gaps


# -- bodies ------------------------------------------------------------------------------------

# Text as clients may send it: any code point, lone surrogates included (json.dumps writes
# those as \ud800 escapes, which Python's json reads back as surrogates).
CHARACTERS = st.one_of(
    st.characters(exclude_categories=[]),  # any code point
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=[]),
    st.sampled_from('\x00\x1f"\\\u2028\ufeff\u00e9'),
)
TEXT = st.text(CHARACTERS, max_size=40)
KEYS = st.one_of(
    st.sampled_from(
        [
            "model",
            "MODEL",
            "Model",
            "\uff4dodel",
            "mod\u0435l",
            "prompt",
            "messages",
            "stream",
            "input",
            "temperature",
            "stream_options",
            "model ",
        ]
    ),
    TEXT,
)
MODELS = st.one_of(
    st.just("stand-in"),
    st.just("STAND-IN"),
    st.just("stand\u2010in"),  # a Unicode hyphen
    TEXT,
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=[])),
    st.text(min_size=300, max_size=3000),
    st.integers(),
    st.none(),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(st.tuples(KEYS, inner), max_size=4)
    ),
    max_leaves=12,
)


def encode(value: Any) -> str:
    """JSON text; a list of (key, value) pairs becomes an object, so duplicate keys survive."""
    if isinstance(value, list) and all(isinstance(v, tuple) for v in value) and value:
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["call", "call", "call", "object", "bytes", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=3000))
        return b'{"model":"stand-in","x":' + b"[" * depth + b"]" * depth + b"}"
    pairs = draw(st.lists(st.tuples(KEYS, VALUES), max_size=6))
    if kind == "call":  # close to a real call: a model first, then anything
        pairs.insert(0, ("model", draw(MODELS)))
        pairs.append(("max_tokens", draw(st.integers(min_value=1, max_value=3))))
        if draw(st.booleans()):
            pairs.append(("stream", True))
    return encode(pairs or [("model", "stand-in")]).encode("utf-8", "surrogatepass")


def check_audited(gateway: RunningGateway, reply: Reply | None) -> dict[str, Any]:
    assert reply is not None, "the gateway closed the connection without an answer"
    record = gateway.record_of(reply)
    # A 5xx only as the backend's own answer, never the gateway's.
    assert reply.status < 500 or (record["error"] or "").startswith("backend answered"), record
    assert record["status"] == reply.status
    line = json.dumps(record, ensure_ascii=False).encode()
    assert len(line) < RECORD_LIMIT, f"record of {len(line)} bytes"
    return record


def still_serves(gateway: RunningGateway) -> None:
    body = b'{"model":"stand-in","prompt":"x","max_tokens":1}'
    reply = gateway.post("/v1/completions", body, key=gateway.key)
    assert reply is not None and reply.status == 200
    gateway.record_of(reply)


@PROPERTY
@given(
    body=bodies(),
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings"]),
    keyed=st.booleans(),
)
def test_any_body_is_refused_or_served_and_always_audited(
    gateway: RunningGateway, body: bytes, path: str, keyed: bool
) -> None:
    reply = gateway.post(path, body, key=gateway.key if keyed else None)
    record = check_audited(gateway, reply)
    assert reply is not None
    if reply.status == 200:
        # Served: the body named the configured model exactly, under the one key "model".
        assert record["model"] == "stand-in" and keyed
    still_serves(gateway)
    gateway.verify()


# -- headers -----------------------------------------------------------------------------------

HEADER_NAMES = st.one_of(
    st.sampled_from([b"Authorization", b"Content-Type", b"Accept", b"Host", b"X-Request-Id",
                     b"Transfer-Encoding", b"Connection", b"Expect", b"Content-Encoding",
                     b"Content-Length"]),
    st.binary(min_size=1, max_size=30).filter(lambda b: not {58, 13, 10} & set(b)),  # : CR LF
)  # fmt: skip
# Any byte but CR and LF (those would end the header line, another request's business).
HEADER_VALUES = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@PROPERTY
@given(
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5),
    bearer=st.one_of(st.none(), st.binary(max_size=80), st.just(b"VALID")),
    method=st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE", b"P\xffST", b"OPTIONS"]),
    path=st.sampled_from([b"/v1/completions", b"/v1/models", b"/x", b"/%ED%A0%80", b"/\xff"]),
)
def test_any_headers_are_refused_or_served_and_always_audited(
    gateway: RunningGateway,
    headers: list[tuple[bytes, bytes]],
    bearer: bytes | None,
    method: bytes,
    path: bytes,
) -> None:
    body = b'{"model":"stand-in","prompt":"x","max_tokens":1}'
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if bearer is not None:
        token = gateway.key.encode() if bearer == b"VALID" else bearer.replace(b"\r\n", b"")
        lines.append(b"Authorization: Bearer " + token)
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    reply = gateway.raw(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    check_audited(gateway, reply)
    still_serves(gateway)
    gateway.verify()
