"""The gateway as LangChain's OpenAI integration (``langchain-openai``) sees it.

A third real client beside the openai SDKs for Python and Node, on the same gateways
(tests/fixtures/openai_sites.py): ``ChatOpenAI`` (chat, streams, tools), the legacy ``OpenAI``
LLM (completions) and ``OpenAIEmbeddings``. LangChain builds its own requests (its message
conversion, its stream handling, its tool schemas) and hands them to the openai SDK; each
request it puts on the wire is counted by an httpx event hook, and each test ends by checking
that the audit log gained exactly that many records. Nothing leaves loopback: LangSmith tracing
is off, and embeddings skip tiktoken's length check (it would fetch an encoding).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from langchain_openai import OpenAI as CompletionsLLM

from appliance.gateway.keys import Limits
from tests.fixtures.openai_sites import Site, counted, llama_gateway, stand_in_gateway

pytestmark = pytest.mark.slow


def http(site: Site) -> openai.DefaultHttpxClient:
    def count(_request: Any) -> None:
        site.calls += 1

    return openai.DefaultHttpxClient(trust_env=False, event_hooks={"request": [count]})


def common(site: Site, key: str | None) -> dict[str, Any]:
    return {
        "base_url": f"http://127.0.0.1:{site.gateway.port}/v1",
        "api_key": key or site.gateway.key,
        "http_client": http(site),
    }


def chat(site: Site, model: str, key: str | None = None, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, include_response_headers=True, **common(site, key), **options)


def request_id(message: Any) -> str:
    return str(message.response_metadata["headers"]["x-request-id"])


@pytest.fixture(autouse=True)
def no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        monkeypatch.setenv(name, "false")


@pytest.fixture(scope="module")
def stand_in_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with stand_in_gateway(
        tmp_path_factory.mktemp("gateway"),
        extra_keys={"limited": ["stand-in"], "throttled": ["stand-in"]},
        key_limits={"throttled": Limits(rpm=1)},
    ) as site:
        yield site


@pytest.fixture
def site(stand_in_site: Site) -> Iterator[Site]:
    yield from counted(stand_in_site)


def test_chat_invoke_with_the_users_id(site: Site) -> None:
    answer = chat(site, "stand-in", max_tokens=3).invoke("hello", user="dave@lab")
    assert isinstance(answer, AIMessage) and answer.content == "w0 w1 w2 "
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 3
    record = site.record(request_id(answer))
    assert (record["status"], record["user"], record["completion_tokens"]) == (
        200,
        "dave@lab",
        3,
    )
    last = site.last_seen()
    assert last["messages"] == [{"role": "user", "content": "hello"}]
    assert last["max_completion_tokens"] == 3  # LangChain's name for max_tokens


@pytest.mark.parametrize("stream_usage", [False, True])
def test_the_stream_reaches_the_client_and_the_tokens_the_record(
    site: Site, stream_usage: bool
) -> None:
    before = len(site.gateway.calls())
    llm = chat(site, "stand-in", max_tokens=4, stream_usage=stream_usage)
    chunks = list(llm.stream("hello"))
    assert "".join(str(c.content) for c in chunks) == "w0 w1 w2 w3 "
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    # LangChain reads the usage chunk only when it asked for one; the record has it either way.
    assert [u["output_tokens"] for u in usage] == ([4] if stream_usage else [])
    assert site.last_seen()["stream_options"] == {"include_usage": True}
    (record,) = site.gateway.calls()[before:]
    assert (record["stream"], record["status"], record["completion_tokens"]) == (True, 200, 4)


def test_completions_through_the_legacy_llm(site: Site) -> None:
    llm = CompletionsLLM(model="stand-in", max_tokens=2, **common(site, None))
    assert llm.invoke("x") == "w0 w1 "
    assert site.last_seen()["prompt"] == ["x"]
    assert site.gateway.calls()[-1]["path"] == "/v1/completions"


def test_embeddings(site: Site) -> None:
    embeddings = OpenAIEmbeddings(
        model="stand-in", check_embedding_ctx_length=False, **common(site, None)
    )
    assert embeddings.embed_query("x") == [0.0, 1.0, 0.5]
    assert embeddings.embed_documents(["a", "b"]) == [[0.0, 1.0, 0.5]]  # the stand-in's one
    assert [r["path"] for r in site.gateway.calls()[-2:]] == ["/v1/embeddings"] * 2


def test_tools_reach_the_runtime_as_langchain_wrote_them(site: Site) -> None:
    @tool
    def lookup_ticket(number: int) -> str:
        """Find a support ticket by number."""
        return str(number)

    bound = chat(site, "stand-in", max_tokens=1).bind_tools(
        [lookup_ticket], tool_choice="lookup_ticket"
    )
    answer = bound.invoke("hello")
    last = site.last_seen()
    (sent,) = last["tools"]
    assert sent["type"] == "function"
    assert sent["function"]["name"] == "lookup_ticket"
    assert sent["function"]["description"] == "Find a support ticket by number."
    assert sent["function"]["parameters"]["properties"] == {"number": {"type": "integer"}}
    assert last["tool_choice"] == {"type": "function", "function": {"name": "lookup_ticket"}}
    assert site.record(request_id(answer))["status"] == 200


def test_refusals_surface_as_the_openai_exception_classes(site: Site) -> None:
    limited = site.gateway.keys["limited"]
    cases: list[tuple[ChatOpenAI, str, type[openai.APIStatusError], int]] = [
        (chat(site, "stand-in", "apl_deadbeef_notakey"), "key", openai.AuthenticationError, 401),
        (chat(site, "nope"), "unknown model", openai.NotFoundError, 404),
        (chat(site, "down", limited), "not allowed", openai.PermissionDeniedError, 403),
    ]
    for llm, case, error, status in cases:
        before = site.calls
        with pytest.raises(error) as caught:
            llm.invoke("hello")
        assert caught.value.status_code == status, case
        # x-should-retry: false, so the SDK's default two retries were not spent.
        assert site.calls == before + 1, case
        assert site.record(caught.value.response.headers["x-request-id"])["status"] == status
    throttled = chat(site, "stand-in", site.gateway.keys["throttled"], max_tokens=1, max_retries=0)
    throttled.invoke("hello")
    with pytest.raises(openai.RateLimitError) as refused:
        throttled.invoke("hello")
    assert refused.value.code == "rate_limit_exceeded"
    record = site.record(refused.value.response.headers["x-request-id"])
    assert record["error"].startswith("rate_limit_exceeded")


def test_a_503_is_retried_and_each_try_recorded(site: Site) -> None:
    before = len(site.gateway.calls())
    llm = chat(site, "stand-in", max_retries=1, extra_body={"x_status": 503})
    with pytest.raises(openai.InternalServerError):
        llm.invoke("hello")
    assert [r["status"] for r in site.gateway.calls()[before:]] == [503, 503]


def test_a_stream_left_early_has_one_record(site: Site) -> None:
    llm = chat(site, "stand-in", max_tokens=3, extra_body={"x_gate": True})
    stream = llm.stream("hello")
    first = next(stream)
    assert first.content == "w0 "
    stream.close()  # what leaving a for loop over it does
    site.release()
    record = site.record(request_id(first))
    assert (record["status"], record["error"]) == (200, "client disconnected")


# -- the real runtime: llama.cpp's server with the tiny model ---------------------------------


@pytest.fixture(scope="module")
def llama_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with llama_gateway(tmp_path_factory.mktemp("llama-gateway")) as site:
        yield site


@pytest.fixture
def llama(llama_site: Site) -> Iterator[Site]:
    yield from counted(llama_site)


def test_llamacpp_invoke_and_stream(llama: Site) -> None:
    llm = chat(llama, "tiny-llama", max_tokens=6, extra_body={"ignore_eos": True})
    answer = llm.invoke("hello", user="erin")
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 6
    record = llama.record(request_id(answer))
    assert (record["user"], record["completion_tokens"]) == ("erin", 6)
    before = len(llama.gateway.calls())
    chunks = list(llm.stream("hello"))
    assert chunks[-1].response_metadata.get("finish_reason") == "length" or any(
        c.response_metadata.get("finish_reason") == "length" for c in chunks
    )
    (streamed,) = llama.gateway.calls()[before:]
    assert (streamed["stream"], streamed["completion_tokens"]) == (True, 6)
