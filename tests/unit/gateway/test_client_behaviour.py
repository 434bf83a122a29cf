"""The pieces behind the gateway's behaviour towards clients: retry advice, the usage-only
stream event, CORS settings and answers. End to end with the openai SDK:
tests/integration/test_gateway_openai.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from multidict import CIMultiDict

from appliance.errors import GatewayConfigError
from appliance.gateway.answers import retry_headers
from appliance.gateway.config import Cors, load_config
from appliance.gateway.cors import CorsPolicy
from appliance.gateway.stream import UsageDropper, usage_only


@dataclass
class Preflight:
    """The two things the CORS policy reads of a request, as aiohttp hands them over."""

    headers: CIMultiDict[str]
    method: str = "OPTIONS"


CONFIG = {
    "listen": {"plain_http": True},  # a config must say HTTPS or plain HTTP (listen.tls)
    "models": [{"name": "m", "digest": "sha256:" + "a" * 64, "backend": "http://127.0.0.1:8081"}],
}


@pytest.mark.parametrize(
    ("status", "upstream", "headers"),
    [
        (200, None, {}),
        (400, None, {"x-should-retry": "false"}),
        (401, None, {"x-should-retry": "false"}),
        (404, None, {"x-should-retry": "false"}),
        (413, None, {"x-should-retry": "false"}),
        (408, None, {}),  # a slow body: another try may be quicker
        (409, None, {}),
        (429, None, {}),
        (429, {"Retry-After": "7"}, {"Retry-After": "7"}),
        (500, None, {}),
        (501, None, {"x-should-retry": "false"}),
        (502, None, {"Retry-After": "2"}),
        (503, {"Retry-After": "5"}, {"Retry-After": "5"}),
        (503, {"Retry-After": "9999"}, {"Retry-After": "2"}),  # beyond any client's patience
        (503, {"Retry-After": "soon"}, {"Retry-After": "2"}),
    ],
)
def test_retry_advice(
    status: int, upstream: dict[str, str] | None, headers: dict[str, str]
) -> None:
    assert retry_headers(status, 2, upstream) == headers


USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
TOKEN = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
LAST = b'data: {"id":"c","choices":[{"index":0,"text":""}],"usage":{"completion_tokens":2}}\n\n'


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_the_usage_only_event_is_dropped_however_the_stream_is_cut(size: int) -> None:
    stream = TOKEN + USAGE + LAST + b"data: [DONE]\n\n"
    dropper = UsageDropper()
    out = b"".join(dropper.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    # Usage that rides on a chunk with a choice (llama.cpp's completions) stays: it breaks
    # no client loop.
    assert out + dropper.flush() == TOKEN + LAST + b"data: [DONE]\n\n"


def test_usage_only_reads_the_event_not_the_text() -> None:
    assert usage_only(USAGE.strip())
    assert not usage_only(TOKEN.strip())
    assert not usage_only(b'data: {"choices":[{"delta":{"content":"\\"choices\\":[] usage"}}]}')
    assert not usage_only(b'data: {"choices":[]')  # cut off: not JSON, passed on as it came


@pytest.mark.parametrize(
    ("cors", "path", "message"),
    [
        ({"allow_origins": ["*"], "allow_credentials": True}, "cors", "cannot go with"),
        ({"allow_origins": ["http://a.lab/path"]}, "cors.allow_origins[0]", "match pattern"),
        ({"allow_origins": ["a.lab"]}, "cors.allow_origins[0]", "match pattern"),
    ],
)
def test_cors_settings_are_checked(
    tmp_path: Path, cors: dict[str, object], path: str, message: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "cors": cors}))
    with pytest.raises(GatewayConfigError) as caught:
        load_config(config)
    assert [p.path for p in caught.value.problems] == [path]
    assert message in caught.value.problems[0].message


def test_cors_is_off_by_default_and_never_answers_star_with_credentials() -> None:
    request = Preflight(
        CIMultiDict({"origin": "https://UI.lab:8443", "Access-Control-Request-Method": "GET"})
    )
    assert not CorsPolicy(Cors()).is_preflight(request)
    listed = CorsPolicy(Cors(allow_origins=["https://ui.lab:8443"], allow_credentials=True))
    assert listed.is_preflight(request)
    headers = listed.preflight_headers(request)
    assert headers["Access-Control-Allow-Origin"] == "https://UI.lab:8443"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    anyone = CorsPolicy(Cors(allow_origins=["*"]))
    headers = anyone.preflight_headers(request)
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    odd = Preflight(
        CIMultiDict(
            {
                "Origin": "https://ui.lab:8443",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, x(bad)",
            }
        )
    )
    assert listed.preflight_headers(odd)["Access-Control-Allow-Headers"] == (
        "Authorization, Content-Type, X-Request-Id, X-Client-Request-Id"
    )
