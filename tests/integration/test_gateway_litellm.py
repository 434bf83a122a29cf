"""The gateway as LiteLLM's SDK sees it (``litellm.completion(model="openai/<name>", ...)``).

A fourth real client beside the openai SDKs for Python and Node and LangChain, on the same
gateways (tests/fixtures/openai_sites.py): chat, async chat, streams (sync, async, left early),
text completions, embeddings, tools, LiteLLM's own exception classes for the gateway's refusals,
and its retries (``num_retries``). LiteLLM builds its requests with its own parameter mapping and
sends them through the openai SDK with an HTTP client of its own; every request it puts on the
wire is counted by an httpx event hook on that client (for async calls around LiteLLM's own
aiohttp transport), and each test ends by checking that the audit log gained exactly that many
records.

LiteLLM fetches a model cost map from the internet when imported, unless told not to
(``LITELLM_LOCAL_MODEL_COST_MAP``, and ``LITELLM_OFFLINE_MODE`` for whatever else it would
fetch on its own). Both are set before it is imported, and the import and every test run under
tests/fixtures/loopback_guard.py: a name lookup or connection beyond loopback is refused and
fails the test. ``test_without_the_settings_the_import_reaches_out`` shows the guard catching
the fetch when the settings are missing (refused in the hook, before any DNS query).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from appliance.gateway.keys import Limits
from tests.fixtures.loopback_guard import loopback_only
from tests.fixtures.openai_sites import Site, counted, llama_gateway, stand_in_gateway

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# What keeps LiteLLM from fetching on its own (checked by the first test of this module).
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}


@pytest.fixture(scope="module")
def litellm() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE.items():
            patch.setenv(name, value)
        with loopback_only() as attempts:
            module = importlib.import_module("litellm")
        assert attempts == [], f"importing litellm reached beyond loopback: {attempts}"
        module.telemetry = False
        WIRE.install(module)
        yield module


@pytest.fixture(autouse=True)
def loopback(litellm: ModuleType) -> Iterator[None]:
    with loopback_only() as attempts:
        yield
    assert attempts == [], f"LiteLLM reached beyond loopback: {attempts}"


class Wire:
    """Every request LiteLLM puts on the wire, counted for the site whose port it goes to, with
    its ``X-Stainless-Retry-Count`` (an int; None when not sent). LiteLLM keeps the openai
    clients it makes (by base URL and key), each with the HTTP client set when it was made: one
    pair of hooked clients serves the whole module."""

    def __init__(self) -> None:
        self.sites: dict[int, Site] = {}
        self.sent: dict[int, list[int | None]] = {}

    def add(self, site: Site) -> None:
        self.sites[site.gateway.port] = site
        self.sent[site.gateway.port] = []

    def count(self, request: httpx.Request) -> None:
        port = request.url.port or 0
        self.sites[port].calls += 1
        header = request.headers.get("x-stainless-retry-count")
        self.sent[port].append(None if header is None else int(header))

    async def count_async(self, request: httpx.Request) -> None:
        self.count(request)

    def install(self, litellm: ModuleType) -> None:
        from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

        hooks = {"request": [self.count]}
        litellm.client_session = httpx.Client(trust_env=False, event_hooks=hooks)
        litellm.aclient_session = httpx.AsyncClient(
            trust_env=False,
            transport=AsyncHTTPHandler.create_async_transport(),  # LiteLLM's own (aiohttp)
            event_hooks={"request": [self.count_async]},
        )


WIRE = Wire()


def options(site: Site, key: str | None = None, **more: Any) -> dict[str, Any]:
    return {
        "api_base": f"http://127.0.0.1:{site.gateway.port}/v1",
        "api_key": key or site.gateway.key,
        **more,
    }


def request_id(answer: Any) -> str:
    headers = answer._hidden_params["additional_headers"]
    return str(headers["llm_provider-x-request-id"])


HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stand_in_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with stand_in_gateway(
        tmp_path_factory.mktemp("gateway"),
        extra_keys={"limited": ["stand-in"], "throttled": ["stand-in"]},
        key_limits={"throttled": Limits(rpm=1)},
    ) as site:
        WIRE.add(site)
        yield site


@pytest.fixture
def site(litellm: ModuleType, stand_in_site: Site) -> Iterator[Site]:
    yield from counted(stand_in_site)


def test_without_the_settings_the_import_reaches_out() -> None:
    """The guard catches LiteLLM's fetch: in a fresh process without OFFLINE, importing it tries
    to reach beyond loopback (refused in the audit hook, so nothing leaves). With OFFLINE it
    does not: the ``litellm`` fixture imports it under the guard."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    command = [sys.executable, "-m", "tests.fixtures.loopback_guard", "litellm"]
    bare = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 0, bare.stderr
    assert [json.loads(line) for line in bare.stdout.splitlines()], "no attempt seen"


def test_completion_with_the_users_id(litellm: ModuleType, site: Site) -> None:
    answer = litellm.completion(
        model="openai/stand-in", messages=HELLO, max_tokens=3, user="dave@lab", **options(site)
    )
    assert answer.choices[0].message.content == "w0 w1 w2 "
    assert answer.usage.completion_tokens == 3
    record = site.record(request_id(answer))
    # LiteLLM sends ``user`` only for model names in OpenAI's own catalog: for any other it is
    # dropped without a word (README: pass it in extra_body), so the record has none.
    assert (record["status"], record["user"], record["completion_tokens"]) == (200, None, 3)
    assert site.last_seen()["messages"] == HELLO
    assert site.gateway.calls()[-1]["model"] == "stand-in"  # "openai/" is LiteLLM's, not sent
    answer = litellm.completion(
        model="openai/stand-in", messages=HELLO, max_tokens=1, extra_body={"user": "dave@lab"},
        **options(site),
    )  # fmt: skip
    assert site.record(request_id(answer))["user"] == "dave@lab"


def test_async_completion(litellm: ModuleType, site: Site) -> None:
    async def both() -> list[Any]:
        calls = [
            litellm.acompletion(model="openai/stand-in", messages=HELLO, max_tokens=n,
                                **options(site))
            for n in (1, 2)
        ]  # fmt: skip
        return list(await asyncio.gather(*calls))

    answers = asyncio.run(both())
    assert [a.usage.completion_tokens for a in answers] == [1, 2]
    assert [site.record(request_id(a))["completion_tokens"] for a in answers] == [1, 2]


def test_the_stream_reaches_the_client_and_the_tokens_the_record(
    litellm: ModuleType, site: Site
) -> None:
    before = len(site.gateway.calls())
    stream = litellm.completion(
        model="openai/stand-in", messages=HELLO, max_tokens=4, stream=True, **options(site)
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "w0 w1 w2 w3 "
    assert site.last_seen()["stream_options"] == {"include_usage": True}
    (record,) = site.gateway.calls()[before:]
    assert (record["stream"], record["status"], record["completion_tokens"]) == (True, 200, 4)


def test_async_stream(litellm: ModuleType, site: Site) -> None:
    async def read() -> str:
        stream = await litellm.acompletion(
            model="openai/stand-in", messages=HELLO, max_tokens=2, stream=True, **options(site)
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    assert asyncio.run(read()) == "w0 w1 "
    assert site.gateway.calls()[-1]["completion_tokens"] == 2


def test_a_stream_left_early_has_one_record(litellm: ModuleType, site: Site) -> None:
    before = len(site.gateway.calls())
    stream = litellm.completion(
        model="openai/stand-in", messages=HELLO, max_tokens=3, stream=True,
        extra_body={"x_gate": True}, **options(site),
    )  # fmt: skip
    first = next(iter(stream))
    assert first.choices[0].delta.content == "w0 "
    stream.close()  # what leaving a with block over it does
    site.release()
    deadline = time.monotonic() + 10  # the record is written once the gateway notices
    while not site.gateway.calls()[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = site.gateway.calls()[before:]
    assert (record["status"], record["error"]) == (200, "client disconnected")


def test_text_completion(litellm: ModuleType, site: Site) -> None:
    answer = litellm.text_completion(
        model="openai/stand-in", prompt="x", max_tokens=2, **options(site)
    )
    assert answer.choices[0].text == "w0 w1 "
    assert site.gateway.calls()[-1]["path"] == "/v1/completions"
    assert site.last_seen()["prompt"] in ("x", ["x"])


def test_embeddings(litellm: ModuleType, site: Site) -> None:
    answer = litellm.embedding(model="openai/stand-in", input=["a"], **options(site))
    assert answer.data[0]["embedding"] == [0.0, 1.0, 0.5]
    assert site.gateway.calls()[-1]["path"] == "/v1/embeddings"

    async def again() -> Any:
        return await litellm.aembedding(model="openai/stand-in", input=["b"], **options(site))

    assert asyncio.run(again()).data[0]["embedding"] == [0.0, 1.0, 0.5]


def test_tools_reach_the_runtime_as_litellm_wrote_them(litellm: ModuleType, site: Site) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup_ticket",
            "description": "Find a support ticket by number.",
            "parameters": {"type": "object", "properties": {"number": {"type": "integer"}}},
        },
    }
    choice = {"type": "function", "function": {"name": "lookup_ticket"}}
    answer = litellm.completion(
        model="openai/stand-in", messages=HELLO, max_tokens=1, tools=[tool], tool_choice=choice,
        **options(site),
    )  # fmt: skip
    last = site.last_seen()
    assert (last["tools"], last["tool_choice"]) == ([tool], choice)
    assert site.record(request_id(answer))["status"] == 200


def test_refusals_surface_as_litellms_exception_classes(litellm: ModuleType, site: Site) -> None:
    limited = site.gateway.keys["limited"]
    cases: list[tuple[str, str | None, dict[str, Any], type[Exception], int]] = [
        ("stand-in", "apl_deadbeef_notakey", {}, litellm.AuthenticationError, 401),
        # LiteLLM maps an OpenAI-compatible endpoint's 403 to its generic APIError (its
        # PermissionDeniedError is for other providers); the status code is kept.
        ("down", limited, {}, litellm.APIError, 403),
        ("nope", None, {}, litellm.NotFoundError, 404),
        ("stand-in", None, {"extra_body": {"x_status": 503}}, litellm.ServiceUnavailableError, 503),
    ]
    for model, key, more, error, status in cases:
        before = (site.calls, len(site.gateway.calls()))
        with pytest.raises(error) as caught:
            litellm.completion(
                model=f"openai/{model}", messages=HELLO, max_retries=0, **options(site, key, **more)
            )
        assert caught.value.status_code == status, model  # type: ignore[attr-defined]
        assert site.calls == before[0] + 1, model
        assert [r["status"] for r in site.gateway.calls()[before[1] :]] == [status], model
    throttled = options(site, site.gateway.keys["throttled"], max_tokens=1, max_retries=0)
    litellm.completion(model="openai/stand-in", messages=HELLO, **throttled)
    with pytest.raises(litellm.RateLimitError) as refused:
        litellm.completion(model="openai/stand-in", messages=HELLO, **throttled)
    assert refused.value.status_code == 429
    assert site.gateway.calls()[-1]["error"].startswith("rate_limit_exceeded")


def test_num_retries_each_try_recorded(litellm: ModuleType, site: Site) -> None:
    """LiteLLM's own retries (``num_retries``): each try has its record, which names the try
    as LiteLLM's openai client numbered it (``retry_count``, from X-Stainless-Retry-Count)."""
    sent = WIRE.sent[site.gateway.port]
    sent.clear()
    before = len(site.gateway.calls())
    with pytest.raises(litellm.ServiceUnavailableError):
        litellm.completion(
            model="openai/stand-in", messages=HELLO, num_retries=2, max_retries=0,
            extra_body={"x_status": 503}, **options(site),
        )  # fmt: skip
    records = site.gateway.calls()[before:]
    assert len(records) == len(sent) > 1
    assert [r["status"] for r in records] == [503] * len(sent)
    assert [r["retry_count"] for r in records] == sent
    sent.clear()
    before = len(site.gateway.calls())
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(
            model="openai/stand-in", messages=HELLO, num_retries=2,
            **options(site, "apl_deadbeef_notakey"),
        )  # fmt: skip
    records = site.gateway.calls()[before:]
    # The openai SDK inside honours x-should-retry: false, LiteLLM's wrapper does not: it calls
    # again num_retries times, each a first try for the SDK. Three calls, three records
    # (README, "The gateway and the audit log").
    assert [(r["status"], r["retry_count"]) for r in records] == [(401, 0)] * 3
    assert sent == [0, 0, 0]


# -- the real runtime: llama.cpp's server with the tiny model ---------------------------------


@pytest.fixture(scope="module")
def llama_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with llama_gateway(tmp_path_factory.mktemp("llama-gateway")) as site:
        WIRE.add(site)
        yield site


@pytest.fixture
def llama(litellm: ModuleType, llama_site: Site) -> Iterator[Site]:
    yield from counted(llama_site)


def test_llamacpp_completion_stream_and_text(litellm: ModuleType, llama: Site) -> None:
    more = options(llama, max_tokens=6, extra_body={"ignore_eos": True})
    erin = {**more, "extra_body": {"ignore_eos": True, "user": "erin"}}
    answer = litellm.completion(model="openai/tiny-llama", messages=HELLO, **erin)
    assert answer.usage.completion_tokens == 6
    record = llama.record(request_id(answer))
    assert (record["user"], record["completion_tokens"]) == ("erin", 6)
    before = len(llama.gateway.calls())
    chunks = list(
        litellm.completion(model="openai/tiny-llama", messages=HELLO, stream=True, **more)
    )
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)
    (streamed,) = llama.gateway.calls()[before:]
    assert (streamed["stream"], streamed["completion_tokens"]) == (True, 6)
    text = litellm.text_completion(model="openai/tiny-llama", prompt="x", **more)
    assert text.usage.completion_tokens == 6
    assert llama.gateway.calls()[-1]["path"] == "/v1/completions"
