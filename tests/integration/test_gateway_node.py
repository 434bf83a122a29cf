"""The gateway as the official openai SDK for Node sees it.

A second real client beside the Python SDK (test_gateway_openai.py), on the same gateways
(tests/fixtures/openai_sites.py): the stand-in backend and llama.cpp's server with the tiny
model. tests/clients/node/drive.mjs runs one scenario per node process with the SDK version
pinned in its package-lock.json (installed by tests/harness/setup.sh) and reports what the
client saw and how many requests it put on the wire; each test ends by checking that the audit
log gained exactly that many records (the SDK's retries and an aborted stream included). One
test speaks HTTPS, as the gateway serves by default, with the CA given as Node users give it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.keys import Limits
from tests.fixtures.gateway import gateway_in_thread
from tests.fixtures.openai_sites import Site, counted, llama_gateway, stand_in_gateway
from tests.fixtures.pki import CA

pytestmark = pytest.mark.slow

NODE_CLIENT = Path(__file__).resolve().parents[1] / "clients" / "node"


def drive(
    site: Site,
    model: str,
    scenario: str,
    https: bool = False,
    ca: Path | None = None,
    **arguments: Any,
) -> Any:
    """Run one scenario of drive.mjs against ``site``; count its requests as the site's calls.
    ``https`` with ``ca``: the client trusts that CA as Node users do (NODE_EXTRA_CA_CERTS)."""
    node = shutil.which("node")
    if node is None or not (NODE_CLIENT / "node_modules" / "openai" / "package.json").is_file():
        pytest.fail(
            "node or the pinned openai package is missing: run tests/harness/setup.sh",
            pytrace=False,
        )
    scheme = "https" if https else "http"
    plan = {
        "base_url": f"{scheme}://localhost:{site.gateway.port}/v1",
        "key": site.gateway.key,
        "keys": site.gateway.keys,
        "model": model,
    }
    # Only what node needs: no proxy or OPENAI_* setting of this machine reaches the client.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APPLIANCE_GATEWAY_PLAN": json.dumps(plan),
        **({"NODE_EXTRA_CA_CERTS": str(ca)} if ca is not None else {}),
    }
    argv = [node, str(NODE_CLIENT / "drive.mjs"), scenario]
    if arguments:
        argv.append(json.dumps(arguments))
    done = subprocess.run(
        argv, cwd=NODE_CLIENT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    site.calls += report["calls"]
    return report["result"]


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


def test_chat_keeps_the_clients_request_id_and_user(site: Site) -> None:
    seen = drive(site, "stand-in", "chat")
    assert (seen["content"], seen["role"]) == ("w0 w1 w2 ", "assistant")
    assert seen["usage"]["completion_tokens"] == 3
    assert seen["client_request_id"] == "node-trace-7"
    record = site.record(seen["request_id"])
    assert (record["client_request_id"], record["user"], record["status"]) == (
        "node-trace-7",
        "carol@lab",
        200,
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"stream_options": {"include_usage": False}}],
    ids=["no stream_options", "include_usage false"],
)
def test_the_common_stream_loop_works_and_the_tokens_are_recorded(
    site: Site, options: dict[str, Any]
) -> None:
    seen = drive(site, "stand-in", "stream", max_tokens=4, **options)
    assert seen["pieces"] == ["w0 ", "w1 ", "w2 ", "w3 "]
    assert seen["finish"] == [None, None, None, "length"]
    assert site.last_seen()["stream_options"] == {"include_usage": True}
    record = site.record(seen["request_id"])
    assert (record["stream"], record["status"], record["completion_tokens"]) == (True, 200, 4)


def test_completions_and_the_usage_chunk_asked_for(site: Site) -> None:
    seen = drive(site, "stand-in", "completion", max_tokens=2)
    assert (seen["text"], seen["usage"]["completion_tokens"]) == ("w0 w1 ", 2)
    assert site.record(seen["request_id"])["path"] == "/v1/completions"
    streamed = drive(site, "stand-in", "completion_stream_with_usage", max_tokens=3)
    assert streamed["texts"] == ["w0 ", "w1 ", "w2 "]
    assert (streamed["last_choices"], streamed["usage"]["completion_tokens"]) == (0, 3)
    assert site.record(streamed["request_id"])["completion_tokens"] == 3


def test_embeddings_in_base64_as_the_node_sdk_asks_and_as_floats(site: Site) -> None:
    seen = drive(site, "stand-in", "embeddings")
    for asked in ("base64", "float"):
        assert seen[asked]["embedding"] == [0.0, 1.0, 0.5]
        record = site.record(seen[asked]["request_id"])
        assert (record["path"], record["status"]) == ("/v1/embeddings", 200)
    assert site.last_seen()["encoding_format"] == "float"


def test_tools_reach_the_runtime_unchanged(site: Site) -> None:
    seen = drive(site, "stand-in", "tools")
    last = site.last_seen()
    assert (last["tools"], last["tool_choice"]) == (seen["tools"], seen["tool_choice"])
    assert last["parallel_tool_calls"] is False
    assert seen["content"] == "w0 "
    assert site.record(seen["request_id"])["status"] == 200


def test_models_list_and_retrieve(site: Site) -> None:
    seen = drive(site, "stand-in", "models")
    assert seen["listed"] == ["stand-in", "down"]
    assert seen["retrieved"] == {"id": "stand-in", "object": "model", "owned_by": "appliance"}


def test_refusals_are_the_sdks_exception_classes_one_call_each(site: Site) -> None:
    seen = drive(site, "stand-in", "errors")
    expected = {
        "unknown_key": (["AuthenticationError"], 401),
        "unknown_model": (["NotFoundError"], 404),
        "not_allowed": (["PermissionDeniedError"], 403),
        "limited": (["RateLimitError"], 429),
    }
    for case, (classes, status) in expected.items():
        assert (seen[case]["classes"], seen[case]["status"]) == (classes, status), case
        record = site.record(seen[case]["request_id"])
        assert record["status"] == status, case
    # No retry can fix these: the SDK's default two retries were not spent on them.
    for case in ("unknown_key", "unknown_model", "not_allowed"):
        assert seen[case]["should_retry"] == "false", case
    assert seen["unknown_model"]["code"] == "model_not_found"
    limited = seen["limited"]
    assert (limited["type"], limited["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert int(limited["retry_after"]) in range(1, 61)
    assert site.record(limited["request_id"])["error"].startswith("rate_limit_exceeded")
    assert site.record(seen["first"]["request_id"])["status"] == 200


def test_a_503_is_retried_twice_as_retry_after_says(site: Site) -> None:
    before = len(site.gateway.calls())
    seen = drive(site, "stand-in", "retried")
    assert (seen["classes"], seen["status"], seen["retry_after"]) == (
        ["InternalServerError"],
        503,
        "1",
    )
    assert [r["status"] for r in site.gateway.calls()[before:]] == [503, 503, 503]
    # The SDK's own backoff would wait about 0.5 s, then 1 s; Retry-After says 1 s each time.
    assert seen["elapsed_ms"] >= 1900


def test_a_stream_the_client_leaves_early_has_one_record(site: Site) -> None:
    seen = drive(site, "stand-in", "cancelled")
    assert (seen["first"], seen["aborted"]) == ("w0 ", True)
    site.release()
    record = site.record(seen["request_id"])
    assert (record["status"], record["error"]) == (200, "client disconnected")


def test_over_https_with_the_site_ca(tmp_path: Path) -> None:
    # As the gateway serves by default: TLS, a certificate from a CA the client is told to trust.
    ca = CA(tmp_path / "pki")
    server = ca.issue("gateway")
    listen = {"plain_http": False, "tls": {"cert": str(server.cert), "key": str(server.key)}}
    with gateway_in_thread(tmp_path, listen=listen) as gateway:
        site = Site(gateway)
        seen = drive(site, "stand-in", "stream", https=True, ca=ca.cert, max_tokens=2)
        assert seen["pieces"] == ["w0 ", "w1 "]
        assert site.record(seen["request_id"])["status"] == 200
        # Without the CA the client refuses the gateway before any HTTP: nothing to record.
        refused = r"(?s)APIConnectionError.*UNABLE_TO_VERIFY_LEAF_SIGNATURE"
        with pytest.raises(AssertionError, match=refused):
            drive(site, "stand-in", "chat", https=True)
        assert len(gateway.calls()) == site.calls == 1
        gateway.verify()


# -- the real runtime: llama.cpp's server with the tiny model ---------------------------------


@pytest.fixture(scope="module")
def llama_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with llama_gateway(tmp_path_factory.mktemp("llama-gateway")) as site:
        yield site


@pytest.fixture
def llama(llama_site: Site) -> Iterator[Site]:
    yield from counted(llama_site)


def test_llamacpp_chat_stream_completion_and_models(llama: Site) -> None:
    chat = drive(llama, "tiny-llama", "chat")
    assert chat["role"] == "assistant" and chat["usage"]["completion_tokens"] >= 1
    record = llama.record(chat["request_id"])
    assert (record["user"], record["client_request_id"]) == ("carol@lab", "node-trace-7")
    assert record["completion_tokens"] == chat["usage"]["completion_tokens"]
    stream = drive(llama, "tiny-llama", "stream", max_tokens=7, ignore_eos=True)
    # Streamed in pieces, each read as chunk.choices[0]; llama.cpp holds a token that ends in
    # part of a UTF-8 character back and sends it with the next, so there may be fewer than 7.
    assert len(stream["pieces"]) >= 3 and stream["finish"][-1] == "length"
    assert llama.record(stream["request_id"])["completion_tokens"] == 7
    asked = drive(
        llama, "tiny-llama", "completion_stream_with_usage", max_tokens=5, ignore_eos=True
    )
    # llama.cpp's completions put the usage on the last chunk with its choice (its chat sends
    # a chunk of its own): either way the client that asked has it, and so has the record.
    assert asked["usage"]["completion_tokens"] == 5
    assert llama.record(asked["request_id"])["completion_tokens"] == 5
    completion = drive(llama, "tiny-llama", "completion", max_tokens=4, ignore_eos=True)
    assert llama.record(completion["request_id"])["completion_tokens"] == 4
    models = drive(llama, "tiny-llama", "models")
    assert models["listed"] == ["tiny-llama"] and models["retrieved"]["id"] == "tiny-llama"
