"""The gateway as the official openai SDK for Python sees it.

The real gateway app (in-process, tests/fixtures/gateway.py) in front of the stand-in backend
(tests/fixtures/openai_backend.py: errors, a held-open stream) and in front of the real
llama.cpp server with the tiny model (the last group). Every request the SDK puts on the wire
is counted by an httpx event hook, every raw request by hand, and each test ends by checking
that the audit log gained exactly one record per call: refusals, the SDK's own retries and
streams the client closed early included.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import Omit
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionStreamOptionsParam

from tests.fixtures.gateway import STAND_IN_DIGEST, Reply, gateway_in_thread
from tests.fixtures.openai_sites import (
    ORIGIN,
    Site,
    counted,
    llama_gateway,
    stand_in_gateway,
)
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.slow

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def last_seen(site: Site) -> Any:
    return site.last_seen()


def get(site: Site, path: str, key: str | None = None) -> Reply:
    """A GET of a page that is not a call (health): not counted, never audited."""
    return site.gateway.get(path, key)


# -- the stand-in backend ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with stand_in_gateway(tmp_path_factory.mktemp("gateway")) as site:
        yield site


@pytest.fixture
def site(stand_in_site: Site) -> Iterator[Site]:
    yield from counted(stand_in_site)


@pytest.mark.parametrize(
    "options",
    [openai.omit, {"include_usage": False}],
    ids=["no stream_options", "include_usage false"],
)
def test_the_common_stream_loop_works_and_the_tokens_are_recorded(
    site: Site, options: ChatCompletionStreamOptionsParam | Omit
) -> None:
    stream = site.client().chat.completions.create(
        model="stand-in", messages=HELLO, max_tokens=4, stream=True, stream_options=options
    )
    # The loop every tutorial writes: it would crash on a usage-only chunk (choices == []).
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert pieces == ["w0 ", "w1 ", "w2 ", "w3 "]
    # The runtime was asked for the usage all the same, and the record has it.
    assert last_seen(site)["stream_options"] == {"include_usage": True}
    record = site.record(stream.response.headers["x-request-id"])
    assert (record["stream"], record["status"], record["completion_tokens"]) == (True, 200, 4)
    assert record["prompt_tokens"] is not None


def test_a_client_that_asks_for_usage_gets_the_usage_chunk(site: Site) -> None:
    stream = site.client().completions.create(
        model="stand-in",
        prompt="x",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert [c.choices[0].text for c in chunks[:-1]] == ["w0 ", "w1 ", "w2 "]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert site.record(stream.response.headers["x-request-id"])["completion_tokens"] == 3


def test_models_retrieve_answers_per_key(site: Site) -> None:
    model = site.client().models.retrieve("stand-in")
    assert (model.id, model.object, model.owned_by) == ("stand-in", "model", "appliance")
    assert (model.model_extra or {})["appliance_digest"] == STAND_IN_DIGEST
    limited = site.client(site.gateway.keys["limited"])
    assert [m.id for m in limited.models.list()] == ["stand-in"]
    for name, refused in (("down", "model_not_allowed"), ("nope", "model_not_found")):
        with pytest.raises(openai.NotFoundError) as caught:
            limited.models.retrieve(name)
        # Allowed or not, existing or not: the same answer, in OpenAI's error shape.
        assert caught.value.code == "model_not_found"
        assert caught.value.body == {
            "message": f"the model {name!r} does not exist",
            "type": "invalid_request_error",
            "code": "model_not_found",
        }
        record = site.record(caught.value.response.headers["x-request-id"])
        assert (record["status"], record["path"], record["method"]) == (
            404,
            f"/v1/models/{name}",
            "GET",
        )
        assert record["model"] == name and record["error"].startswith(refused)
    assert record["key_id"] is not None
    with pytest.raises(openai.AuthenticationError):
        site.client("apl_deadbeef_notakey").models.retrieve("stand-in")


def test_the_clients_request_id_and_user_are_recorded(site: Site) -> None:
    client = site.client()
    for header in ("X-Request-Id", "X-Client-Request-Id"):
        raw = client.chat.completions.with_raw_response.create(
            model="stand-in",
            messages=HELLO,
            max_tokens=1,
            user="alice@lab",
            extra_headers={header: "trace-7f3a"},
        )
        # The gateway's own id stays the record's key; the client's is kept beside it.
        record = site.record(raw.headers["x-request-id"])
        assert raw.headers["x-request-id"] != "trace-7f3a"
        assert raw.headers["x-client-request-id"] == "trace-7f3a"
        assert (record["client_request_id"], record["user"]) == ("trace-7f3a", "alice@lab")
        assert raw.parse().choices[0].message.content == "w0 "
    plain = client.chat.completions.with_raw_response.create(
        model="stand-in", messages=HELLO, max_tokens=1
    )
    record = site.record(plain.headers["x-request-id"])
    assert (record["client_request_id"], record["user"]) == (None, None)


@pytest.mark.parametrize(
    ("own", "status"),
    [
        (b"r" * 5000, 200),
        (b"spaces and\ttabs", 200),
        (b"\xff\xfe\xfd", 200),
        ("caf\u00e9 \U0001f600".encode(), 200),
        (b"\x1b[31mred\x00", 400),  # aiohttp's parser refuses control bytes: audited all the same
    ],
    ids=["long", "spaces", "not utf-8", "non-ascii", "control"],
)
def test_hostile_request_ids_and_users_stay_bounded(site: Site, own: bytes, status: int) -> None:
    body = json.dumps(
        {"model": "stand-in", "prompt": "x", "max_tokens": 1, "user": "u" * 10000}
    ).encode()
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + site.gateway.key.encode() + b"\r\n"
        b"X-Request-Id: " + own + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    reply = site.raw(head + body)
    assert reply.status == status
    record = site.record(reply.headers["x-request-id"])
    assert len(json.dumps(record)) < 2048
    if status == 400:
        assert record["error"].startswith("malformed_request")
        assert reply.headers["x-should-retry"] == "false"
        return
    assert record["user"].startswith("u" * 256 + "...[10000 chars, sha256:")
    assert record["client_request_id"] is not None
    assert len(record["client_request_id"]) <= 128 + 90
    # Only a printable ASCII id goes back to the client as it came.
    assert "x-client-request-id" not in reply.headers


def test_an_error_no_retry_can_fix_is_one_call_and_one_record(site: Site) -> None:
    client = site.client()  # the SDK's default: two retries
    assert client.max_retries == 2
    for status in (501, 400, 422):  # the backend's own answers: the SDK would retry a 501
        before = site.calls
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(model="stand-in", input="x", extra_body={"x_status": status})
        assert caught.value.status_code == status
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert site.calls == before + 1
    before = site.calls
    with pytest.raises(openai.PermissionDeniedError) as denied:
        site.client(site.gateway.keys["limited"]).chat.completions.create(
            model="down", messages=HELLO
        )
    assert denied.value.response.headers["x-should-retry"] == "false"
    assert site.calls == before + 1


def test_a_503_is_retried_as_retry_after_says(site: Site) -> None:
    before = len(site.gateway.calls())
    with pytest.raises(openai.InternalServerError) as caught:
        site.client().completions.create(model="stand-in", prompt="x", extra_body={"x_status": 503})
    assert caught.value.response.headers["retry-after"] == "1"
    records = site.gateway.calls()[before:]
    assert [r["status"] for r in records] == [503, 503, 503]  # the call and two retries
    assert [r["retry_count"] for r in records] == [0, 1, 2]  # X-Stainless-Retry-Count
    times = [datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in records]
    # The SDK's own backoff would wait 0.375-0.5 s before the first retry; Retry-After says 1.
    assert all((b - a).total_seconds() >= 0.95 for a, b in itertools.pairwise(times))


def test_a_call_the_client_gave_up_on_is_cut_and_its_retry_recorded(site: Site) -> None:
    """The SDK's timeout: it closes the connection and tries again. Each try ends when its
    client leaves (the backend's request cut with it, not left generating beside the retry),
    and each has its record: 499 (nothing was answered), which try it was."""
    before = len(site.gateway.calls())
    client = site.client(max_retries=1, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="stand-in", messages=HELLO, extra_body={"x_delay": 3})
    deadline = time.monotonic() + 10
    while len(site.gateway.calls()) - before < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = site.gateway.calls()[before:]
    assert [(r["status"], r["error"], r["retry_count"]) for r in records] == [
        (499, "client disconnected", 0),
        (499, "client disconnected", 1),
    ]
    assert all(r["latency_ms"] < 2500 for r in records)  # not the backend's 3 s


def test_a_backend_that_does_not_answer_gets_502_with_retry_after(site: Site) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        site.client(max_retries=0).chat.completions.create(model="down", messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "backend_unavailable"


def test_a_stream_the_client_closes_early_has_one_record(site: Site) -> None:
    stream = site.client().chat.completions.create(
        model="stand-in", messages=HELLO, max_tokens=3, stream=True, extra_body={"x_gate": True}
    )
    first = next(iter(stream))
    assert first.choices[0].delta.content == "w0 "
    stream.close()
    site.release()
    record = site.record(stream.response.headers["x-request-id"])
    assert (record["status"], record["error"]) == (200, "client disconnected")


def test_liveness_and_readiness(site: Site) -> None:
    for path in ("/health/live", "/livez"):
        live = get(site, path)
        assert (live.status, live.json()) == (200, {"status": "ok"})
    backend_address = site.gateway.backend.removeprefix("http://")
    for path in ("/health", "/health/ready", "/readyz"):
        for key in (None, site.gateway.keys["limited"], "apl_deadbeef_notakey"):
            ready = get(site, path, key)
            # One model down, one up: the gateway can serve, so it is ready, and says which.
            assert ready.status == 200
            assert ready.json() == {
                "status": "degraded",
                "audit": "ok",
                "models": {"stand-in": {"status": "ok"}, "down": {"status": "down"}},
            }
            assert backend_address.encode() not in ready.body and b"127.0.0.1" not in ready.body
    operator = get(site, "/health", site.gateway.key).json()
    assert operator["models"]["stand-in"] == {
        "backend": site.gateway.backend,
        "status": "ok",
        "http": 200,
    }
    assert operator["models"]["down"]["status"] == "down" and operator["models"]["down"]["error"]
    assert operator["connections"]["limit"] == 1024 and operator["keys"] == 2


def test_cors_preflight_and_answers_for_a_listed_origin(site: Site) -> None:
    preflight = site.raw(
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Origin: " + ORIGIN.encode() + b"\r\nAccess-Control-Request-Method: POST\r\n"
        b"Access-Control-Request-Headers: authorization, content-type, x-stainless-os\r\n\r\n"
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["access-control-allow-headers"] == (
        "authorization, content-type, x-stainless-os"
    )
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers
    record = site.record(preflight.headers["x-request-id"])
    assert (record["method"], record["status"], record["key_id"]) == ("OPTIONS", 204, None)
    client = site.client(default_headers={"Origin": ORIGIN})
    raw = client.chat.completions.with_raw_response.create(
        model="stand-in", messages=HELLO, max_tokens=1
    )
    assert raw.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-Id" in raw.headers["access-control-expose-headers"]
    stream = client.chat.completions.create(
        model="stand-in", messages=HELLO, max_tokens=1, stream=True
    )
    assert stream.response.headers["access-control-allow-origin"] == ORIGIN
    assert [c.choices[0].delta.content for c in stream] == ["w0 "]


def test_no_cors_for_other_origins(site: Site) -> None:
    preflight = site.raw(
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Origin: http://elsewhere.lab.internal\r\nAccess-Control-Request-Method: POST\r\n\r\n"
    )
    # An ordinary call without a key: refused, audited, and nothing lets the browser in.
    assert preflight.status == 401
    assert not [h for h in preflight.headers if h.startswith("access-control-")]
    other = site.client(default_headers={"Origin": "http://elsewhere.lab.internal"})
    raw = other.models.with_raw_response.list()
    assert not [h for h in raw.headers if h.lower().startswith("access-control-")]


def test_with_every_runtime_down_the_gateway_is_live_but_not_ready(tmp_path: Path) -> None:
    # Its own gateway, with the defaults: CORS off, and nothing behind its one route.
    with gateway_in_thread(tmp_path, f"http://127.0.0.1:{free_port()}") as gateway:
        site = Site(gateway)
        ready = get(site, "/health")
        assert (ready.status, ready.json()["status"]) == (503, "unavailable")
        assert get(site, "/health/live").status == 200
        preflight = site.raw(
            b"OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Origin: " + ORIGIN.encode() + b"\r\nAccess-Control-Request-Method: GET\r\n\r\n"
        )
        assert preflight.status == 401
        assert "access-control-allow-origin" not in preflight.headers
        assert len(gateway.calls()) == site.calls


# -- the real runtime: llama.cpp's server with the tiny model ---------------------------------


@pytest.fixture(scope="module")
def llama_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with llama_gateway(tmp_path_factory.mktemp("llama-gateway")) as site:
        yield site


@pytest.fixture
def llama(llama_site: Site) -> Iterator[Site]:
    yield from counted(llama_site)


def test_llamacpp_stream_loop_and_tokens(llama: Site) -> None:
    client = llama.client()
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=HELLO,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": False},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    finish = [chunk.choices[0].finish_reason for chunk in chunks]  # every chunk has a choice
    assert finish[-1] == "length"
    assert {chunk.model for chunk in chunks} == {"tiny-llama"}
    record = llama.record(stream.response.headers["x-request-id"])
    assert (record["completion_tokens"], record["model"]) == (7, "tiny-llama")
    # llama.cpp sends the usage as a chunk of its own (choices: []): the client that asks for
    # it gets it.
    asked = client.chat.completions.create(
        model="tiny-llama",
        messages=HELLO,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    last = list(asked)[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 5


def test_llamacpp_models_and_refusals(llama: Site) -> None:
    client = llama.client()
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"
    assert [m.id for m in client.models.list()] == ["tiny-llama"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert caught.value.response.headers["x-should-retry"] == "false"
    answer = client.chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=3, user="bob"
    )
    assert answer.usage is not None and answer.choices[0].message.role == "assistant"
    record = llama.record(answer._request_id or "")
    assert (record["user"], record["completion_tokens"]) == ("bob", answer.usage.completion_tokens)
