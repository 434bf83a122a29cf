"""The real ``appliance-gateway`` process on loopback, in front of the real llama.cpp server
(xllamacpp, through the llamacpp role's launcher, serving the tiny GGUF model) and of the
stand-in backend (tests/fixtures/openai_backend.py) for errors and a held-open stream.

A random model writes gibberish: these tests assert structure, token counts, finish reasons,
model ids and the audit trail, never the words.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.audit import CURRENT
from appliance.gateway.keys import add_key
from tests.fixtures.gateway import Reply as Answer
from tests.fixtures.llama import llama_server as llama_server_at
from tests.fixtures.llama import write_tiny_gguf
from tests.fixtures.openai_backend import serve_in_thread
from tests.fixtures.servers import free_port, wait_for

BIN = Path(sys.executable).parent
STAND_IN_DIGEST = "sha256:" + "5" * 64

pytestmark = pytest.mark.slow


@dataclass
class Gateway:
    url: str
    port: int
    audit_dir: Path
    keys_file: Path
    stand_in: str
    process: subprocess.Popen[bytes]
    log: Path
    digests: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)  # name -> plaintext
    ids: dict[str, str] = field(default_factory=dict)  # name -> key id
    audited_calls: int = 0

    def call(
        self, method: str, path: str, body: Any = None, key: str | None = None, raw: bytes = b""
    ) -> Answer:
        """One call through the gateway, counted so the test can tell the log missed none."""
        data = raw or (json.dumps(body).encode() if body is not None else b"")
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=data or None, headers=headers)
            response = connection.getresponse()
            answer = Answer(response.status, dict(response.headers), response.read())
        finally:
            connection.close()
        if path not in ("/health", "/metrics"):
            self.audited_calls += 1
        return answer

    def records(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for path in [
                *sorted(self.audit_dir.glob("audit-*.jsonl")),
                self.audit_dir / CURRENT,
            ]
            for line in path.read_text().splitlines()
        ]

    def record(self, answer: Answer) -> dict[str, Any]:
        request_id = answer.headers["X-Request-Id"]
        found = [r for r in self.records() if r.get("request_id") == request_id]
        assert len(found) == 1, f"{len(found)} records of {request_id}"
        return found[0]

    def metric(self, name: str) -> float:
        text = self.call("GET", "/metrics").body.decode()
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + " ")
        ]
        return values[0] if values else 0.0


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with llama_server_at(tiny_gguf, tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def gateway(
    llama_server: str, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gateway")
    keys_file = root / "keys.json"
    with serve_in_thread(free_port()) as stand_in:
        digests = {
            "tiny-llama": "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
            "stand-in": STAND_IN_DIGEST,
            "down": "sha256:" + "d" * 64,
        }
        config = {
            "listen": {"host": "127.0.0.1", "port": free_port(), "plain_http": True},
            "keys_file": str(keys_file),
            "audit": {"dir": str(root / "audit"), "max_bytes": 1 << 20, "fsync": False},
            "max_body_bytes": 64 << 10,
            "models": [
                {"name": "tiny-llama", "digest": digests["tiny-llama"], "backend": llama_server},
                {
                    "name": "stand-in",
                    "digest": STAND_IN_DIGEST,
                    "backend": stand_in,
                    "backend_model": "sb",
                    "health_path": "/api/version",  # it has no /health, like Ollama
                },
                {
                    "name": "down",
                    "digest": digests["down"],
                    "backend": f"http://127.0.0.1:{free_port()}",
                },
            ],
        }
        (root / "config.json").write_text(json.dumps(config))
        keys, ids = {}, {}
        for name, models in (("operator", ["*"]), ("limited", ["stand-in"])):
            keys[name], record = add_key(keys_file, name, models)
            ids[name] = record.id
        check = subprocess.run(
            [
                str(BIN / "appliance-gateway"),
                "--config",
                str(root / "config.json"),
                "--check-config",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        port = config["listen"]["port"]  # type: ignore[index]
        log = root / "gateway.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(BIN / "appliance-gateway"), "--config", str(root / "config.json")],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        running: Gateway | None = None
        try:
            # The "down" backend makes /health answer 503: the gateway is up all the same.
            wait_for(f"http://127.0.0.1:{port}/health", process, {200, 503}, log)
            running = Gateway(
                url=f"http://127.0.0.1:{port}",
                port=port,
                audit_dir=root / "audit",
                keys_file=keys_file,
                stand_in=stand_in,
                process=process,
                log=log,
                digests=digests,
                keys=keys,
                ids=ids,
            )
            yield running
        finally:
            # A test may have restarted the gateway: stop the one running now.
            process = running.process if running is not None else process
            process.terminate()
            assert process.wait(timeout=30) == 0, log.read_text()


def sse_events(body: bytes) -> list[str]:
    return [
        line[len(b"data: ") :].decode() for line in body.split(b"\n") if line.startswith(b"data: ")
    ]


def check_record(
    gateway: Gateway,
    answer: Answer,
    request: bytes | None,
    key: str | None,
    model: str | None,
    status: int,
) -> dict[str, Any]:
    record = gateway.record(answer)
    assert record["key_id"] == (gateway.ids[key] if key else None)
    assert record["model"] == model
    assert record["model_digest"] == (gateway.digests.get(model) if model else None)
    assert record["status"] == status == answer.status
    assert record["client"] == "127.0.0.1"
    # A GET has no prompt: None, not the digest of nothing.
    prompt = hashlib.sha256(request).hexdigest() if request is not None else None
    assert record["prompt_sha256"] == prompt
    assert record["response_sha256"] == hashlib.sha256(answer.body).hexdigest()
    assert record["latency_ms"] > 0
    return record


# -- the real runtime ------------------------------------------------------------------------


def test_models_are_filtered_per_key(gateway: Gateway) -> None:
    everything = gateway.call("GET", "/v1/models", key="operator")
    assert everything.status == 200
    listed = everything.json()
    assert listed["object"] == "list"
    assert {m["id"]: m["appliance_digest"] for m in listed["data"]} == gateway.digests
    limited = gateway.call("GET", "/v1/models", key="limited").json()
    assert [m["id"] for m in limited["data"]] == ["stand-in"]
    record = check_record(gateway, everything, None, "operator", None, 200)
    assert record["path"] == "/v1/models" and record["method"] == "GET"


def test_completion_through_llamacpp(gateway: Gateway) -> None:
    body = {"model": "tiny-llama", "prompt": "the appliance", "max_tokens": 8, "ignore_eos": True}
    request = json.dumps(body).encode()
    answer = gateway.call("POST", "/v1/completions", raw=request, key="operator")
    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["object"] == "text_completion"
    assert result["model"] == "tiny-llama"
    assert result["choices"][0]["finish_reason"] == "length"
    assert isinstance(result["choices"][0]["text"], str)
    assert result["usage"]["completion_tokens"] == 8
    record = check_record(gateway, answer, request, "operator", "tiny-llama", 200)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        result["usage"]["prompt_tokens"],
        8,
    )
    assert (record["stream"], record["error"]) == (False, None)


def test_chat_through_llamacpp(gateway: Gateway) -> None:
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "ignore_eos": True,
    }
    request = json.dumps(body).encode()
    answer = gateway.call("POST", "/v1/chat/completions", raw=request, key="operator")
    assert answer.status == 200, answer.body
    result = answer.json()
    assert (result["object"], result["model"]) == ("chat.completion", "tiny-llama")
    choice = result["choices"][0]
    assert (choice["message"]["role"], choice["finish_reason"]) == ("assistant", "length")
    assert result["usage"]["completion_tokens"] == 6
    record = check_record(gateway, answer, request, "operator", "tiny-llama", 200)
    assert record["completion_tokens"] == 6
    assert record["prompt_tokens"] == result["usage"]["prompt_tokens"] > 0


def test_streaming_chat_through_llamacpp(gateway: Gateway) -> None:
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "stream please"}],
        "max_tokens": 7,
        "ignore_eos": True,
        "stream": True,
    }
    request = json.dumps(body).encode()
    answer = gateway.call("POST", "/v1/chat/completions", raw=request, key="operator")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(answer.body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"tiny-llama"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    # The gateway asked for usage (the client set no stream_options) and kept llama.cpp's
    # usage-only chunk from the client, who did not ask for it: every chunk has a choice.
    assert all(c["choices"] for c in chunks)
    record = check_record(gateway, answer, request, "operator", "tiny-llama", 200)
    assert (record["stream"], record["completion_tokens"]) == (True, 7)
    assert record["prompt_tokens"] > 0


# -- refusals ---------------------------------------------------------------------------------


def test_missing_or_unknown_key_is_refused_and_audited(gateway: Gateway) -> None:
    request = json.dumps({"model": "tiny-llama", "prompt": "x"}).encode()
    for key, code in ((None, "missing_api_key"), ("apl_deadbeef_notakey", "invalid_api_key")):
        answer = gateway.call("POST", "/v1/completions", raw=request, key=key)
        assert answer.status == 401
        assert answer.json()["error"]["code"] == code
        assert set(answer.json()["error"]) == {"message", "type", "code"}
        record = check_record(gateway, answer, request, None, "tiny-llama", 401)
        assert record["error"].startswith(code)
    assert "claims k-deadbeef" in record["error"]
    # A key's id is not enough: the whole key is checked.
    forged = f"apl_{gateway.ids['operator'][2:]}_{'A' * 43}"
    answer = gateway.call("GET", "/v1/models", key=forged)
    assert answer.status == 401 and gateway.record(answer)["key_id"] is None


def test_model_not_on_the_allow_list_is_refused_and_audited(gateway: Gateway) -> None:
    request = json.dumps({"model": "tiny-llama", "prompt": "x"}).encode()
    answer = gateway.call("POST", "/v1/completions", raw=request, key="limited")
    assert answer.status == 403
    assert answer.json()["error"]["type"] == "permission_error"
    record = check_record(gateway, answer, request, "limited", "tiny-llama", 403)
    assert record["error"].startswith("model_not_allowed")


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"prompt": "no model"}', 400, "missing_model"),
        (b'{"model": "nope", "prompt": "x"}', 404, "model_not_found"),
        (
            json.dumps({"model": "stand-in", "prompt": "x" * (70 << 10)}).encode(),
            413,
            "request_too_large",
        ),
        (b'{"model": "down", "prompt": "x"}', 502, "backend_unavailable"),
        # A runtime may read these as a stream the gateway would record and charge as a whole
        # answer, without its usage.
        (b'{"model": "stand-in", "prompt": "x", "stream": 1}', 400, "invalid_stream"),
        (b'{"model": "stand-in", "prompt": "x", "stream": "true"}', 400, "invalid_stream"),
        (
            b'{"model": "stand-in", "prompt": "x", "stream": true, "stream_options": []}',
            400,
            "invalid_stream_options",
        ),
    ],
)
def test_bad_calls_get_openai_errors(gateway: Gateway, raw: bytes, status: int, code: str) -> None:
    answer = gateway.call("POST", "/v1/completions", raw=raw, key="operator")
    assert (answer.status, answer.json()["error"]["code"]) == (status, code)
    record = gateway.record(answer)
    assert (record["status"], record["key_id"]) == (status, gateway.ids["operator"])
    assert record["error"].startswith(code)


# -- the stand-in: what a real runtime cannot be made to do on demand -------------------------


def test_stream_is_passed_on_before_the_backend_finishes(gateway: Gateway) -> None:
    body = {"model": "stand-in", "prompt": "x", "max_tokens": 3, "stream": True, "x_gate": True}
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {gateway.keys['operator']}"},
    )
    gateway.audited_calls += 1
    response = connection.getresponse()
    # The backend holds the rest of the stream until released: a buffering gateway would
    # time out here instead of handing over the first chunk.
    first = response.readline()
    assert first.startswith(b"data: ") and b'"w0 "' in first
    release = urllib.request.Request(gateway.stand_in + "/_release", method="POST")  # noqa: S310
    urllib.request.urlopen(release, timeout=5).close()  # noqa: S310 - loopback
    rest = response.read()
    connection.close()
    events = sse_events(first + rest)
    assert events[-1] == "[DONE]"
    # The usage the gateway asked for is in the record, not in the client's stream.
    assert [json.loads(e)["choices"][0]["text"] for e in events[:-1]] == ["w0 ", "w1 ", "w2 "]
    record = gateway.record(Answer(200, dict(response.headers), first + rest))
    assert record["response_sha256"] == hashlib.sha256(first + rest).hexdigest()
    assert (record["stream"], record["completion_tokens"]) == (True, 3)


def test_model_is_renamed_for_the_backend_and_usage_requested_once(gateway: Gateway) -> None:
    def last_seen() -> Any:
        with urllib.request.urlopen(gateway.stand_in + "/_last", timeout=5) as answer:  # noqa: S310
            return json.loads(answer.read())

    body = {"model": "stand-in", "prompt": "x", "max_tokens": 2, "stream": True}
    answer = gateway.call("POST", "/v1/completions", body=body, key="limited")
    assert answer.status == 200
    assert last_seen() == {**body, "model": "sb", "stream_options": {"include_usage": True}}
    # The backend answered as "sb"; the client sees the name /v1/models lists, in every event.
    chunks = [json.loads(e) for e in sse_events(answer.body) if e != "[DONE]"]
    assert chunks and {c["model"] for c in chunks} == {"stand-in"}
    plain = gateway.call("POST", "/v1/completions", body={**body, "stream": False}, key="limited")
    assert json.loads(plain.body)["model"] == "stand-in"
    own = {**body, "stream_options": {"include_usage": False}}
    answer = gateway.call("POST", "/v1/completions", body=own, key="limited")
    # A client that says no to usage is still counted: the runtime is asked all the same, and
    # the usage goes to the record, not to the client.
    assert last_seen() == {**own, "model": "sb", "stream_options": {"include_usage": True}}
    assert not [e for e in sse_events(answer.body) if '"usage"' in e]
    assert gateway.record(answer)["completion_tokens"] == 2


def test_backend_failure_passes_through_and_counts(gateway: Gateway) -> None:
    before = gateway.metric('appliance_gateway_backend_errors_total{model="stand-in"}')
    answer = gateway.call(
        "POST",
        "/v1/embeddings",
        body={"model": "stand-in", "input": "x", "x_status": 500},
        key="operator",
    )
    assert answer.status == 500
    assert gateway.record(answer)["error"] == "backend answered 500"
    after = gateway.metric('appliance_gateway_backend_errors_total{model="stand-in"}')
    assert after == before + 1


def test_embeddings(gateway: Gateway) -> None:
    answer = gateway.call(
        "POST", "/v1/embeddings", body={"model": "stand-in", "input": "a b"}, key="operator"
    )
    assert answer.status == 200 and answer.json()["data"][0]["object"] == "embedding"
    assert gateway.record(answer)["prompt_tokens"] == answer.json()["usage"]["prompt_tokens"]


# -- operations -------------------------------------------------------------------------------


def test_metrics_count_calls_tokens_and_records(gateway: Gateway) -> None:
    series = 'appliance_gateway_requests_total{model="tiny-llama",status="200"}'
    tokens = 'appliance_gateway_tokens_total{model="tiny-llama",kind="completion"}'
    before = {
        name: gateway.metric(name)
        for name in (series, tokens, "appliance_gateway_audit_records_total")
    }
    body = {"model": "tiny-llama", "prompt": "count me", "max_tokens": 3, "ignore_eos": True}
    assert gateway.call("POST", "/v1/completions", body=body, key="operator").status == 200
    after = {name: gateway.metric(name) for name in before}
    assert after[series] == before[series] + 1
    assert after[tokens] == before[tokens] + 3
    assert (
        after["appliance_gateway_audit_records_total"]
        == before["appliance_gateway_audit_records_total"] + 1
    )
    text = gateway.call("GET", "/metrics").body.decode()
    assert 'appliance_gateway_request_duration_seconds_bucket{model="tiny-llama",le="+Inf"}' in text


def test_health_reports_each_backend(gateway: Gateway) -> None:
    answer = gateway.call("GET", "/health")
    health = answer.json()
    # Readiness: one model down, the others up: the gateway serves, and says it is degraded.
    assert answer.status == 200 and health["status"] == "degraded"
    assert {name: m["status"] for name, m in health["models"].items()} == {
        "tiny-llama": "ok",
        "stand-in": "ok",
        "down": "down",
    }
    assert health["audit"] == "ok"


def test_sighup_reloads_the_keys(gateway: Gateway) -> None:
    plaintext, record = add_key(gateway.keys_file, "late", ["stand-in"])
    assert gateway.call("GET", "/v1/models", key=plaintext).status == 401
    gateway.process.send_signal(signal.SIGHUP)
    for _ in range(50):
        answer = gateway.call("GET", "/v1/models", key=plaintext)
        if answer.status == 200:
            break
        time.sleep(0.1)
    assert answer.status == 200
    assert gateway.record(answer)["key_id"] == record.id
    gateway.ids["late"] = record.id


def test_every_call_is_audited_and_tampering_is_detected(gateway: Gateway, tmp_path: Path) -> None:
    records = gateway.records()
    # Besides the calls, the chain holds each key's creation (key_events.py).
    calls = [r for r in records if "request_id" in r]
    assert len(calls) == gateway.audited_calls
    assert [r["key_id"] for r in records if r.get("event") == "key_created"] == [
        gateway.ids["operator"],
        gateway.ids["limited"],
        gateway.ids["late"],
    ]
    assert [r["seq"] for r in records] == list(range(len(records)))
    verify = subprocess.run(
        [str(BIN / "appliance"), "--json", "audit", "verify", "--dir", str(gateway.audit_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["records"] == len(records)
    # Tamper with a copy (the gateway keeps writing the original): change one status.
    copy = tmp_path / "audit"
    shutil.copytree(gateway.audit_dir, copy)
    lines = (copy / "audit.jsonl").read_text().splitlines(keepends=True)
    first_call = next(n for n, line in enumerate(lines) if '"status":200' in line)
    lines[first_call] = lines[first_call].replace('"status":200', '"status":204')
    (copy / "audit.jsonl").write_text("".join(lines))
    tampered = subprocess.run(
        [str(BIN / "appliance"), "--json", "audit", "verify", "--dir", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert tampered.returncode == 34, tampered.stdout + tampered.stderr
    problem = json.loads(tampered.stdout)["error"]["problems"][0]
    assert (problem["path"], problem["line"]) == ("audit.jsonl", first_call + 1)
    assert "does not match its hash" in problem["message"]
    shown = subprocess.run(
        [
            str(BIN / "appliance"),
            "--json",
            "audit",
            "show",
            "--dir",
            str(gateway.audit_dir),
            "--request-id",
            calls[1]["request_id"],
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(shown.stdout)["records"] == [calls[1]]


def test_restart_continues_the_chain(gateway: Gateway) -> None:
    config = gateway.audit_dir.parent / "config.json"
    gateway.process.terminate()
    assert gateway.process.wait(timeout=30) == 0
    with gateway.log.open("ab") as sink:
        gateway.process = subprocess.Popen(
            [str(BIN / "appliance-gateway"), "--config", str(config)], stdout=sink, stderr=sink
        )
    wait_for(gateway.url + "/health", gateway.process, {200, 503}, gateway.log)
    count = len(gateway.records())
    answer = gateway.call("GET", "/v1/models", key="operator")
    assert gateway.record(answer)["seq"] == count
    assert (
        subprocess.run(
            [str(BIN / "appliance"), "audit", "verify", "--dir", str(gateway.audit_dir)],
            check=False,
        ).returncode
        == 0
    )
