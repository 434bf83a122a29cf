"""The llama.cpp launcher (roles/runtime_llamacpp/files/appliance-llamacpp) for real: the
xllamacpp wheel's native server, a tiny random GGUF, loopback only. Random weights write
gibberish, so these tests check the API's structure, token counts and model ids, never text."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.roles import ROLES_DIR
from tests.fixtures.gateway import STAND_IN_DIGEST, gateway_in_thread

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROLES_DIR / "runtime_llamacpp" / "files" / "appliance-llamacpp"
ALIAS = "tiny-llama"

pytest.importorskip("xllamacpp", reason="the xllamacpp wheel (dev extra) serves the model")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Launched:
    process: subprocess.Popen[str]
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def open(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET, or POST ``body`` as JSON; the response, to read or iterate."""
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            self.url(path),
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        return urllib.request.urlopen(request, timeout=30)  # noqa: S310 - http://127.0.0.1 only

    def get(self, path: str) -> Any:
        with self.open(path) as answer:
            return json.load(answer)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        with self.open(path, body) as answer:
            return json.load(answer)


def launch(model: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(LAUNCHER),
            "--model",
            str(model),
            "--alias",
            ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ctx-size",
            "512",
            "--threads",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_healthy(server: Launched, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            output = server.process.stdout.read() if server.process.stdout else ""
            raise AssertionError(f"launcher exited {server.process.returncode}:\n{output}")
        try:
            if server.get("/health") == {"status": "ok"}:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no /health within {seconds} s")


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny.gguf"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "gguf", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def server(gguf_model: Path) -> Iterator[Launched]:
    port = free_port()
    launched = Launched(launch(gguf_model, port, "--parallel", "2"), port)
    try:
        wait_healthy(launched)
        yield launched
    finally:
        launched.process.kill()
        launched.process.wait(timeout=10)


def test_health_answers_ok(server: Launched) -> None:
    assert server.get("/health") == {"status": "ok"}


def test_models_lists_the_alias_only(server: Launched) -> None:
    models = server.get("/v1/models")
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [ALIAS]


def test_chat_completion_has_choices_finish_reason_and_usage(server: Launched) -> None:
    body = server.post(
        "/v1/chat/completions",
        {"model": ALIAS, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
    )
    assert body["object"] == "chat.completion"
    assert body["model"] == ALIAS
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in {"length", "stop"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_reached_is_finish_reason_length(server: Launched) -> None:
    # min_tokens keeps the end-of-sequence token away, so the limit is what stops it.
    body = server.post(
        "/v1/completions",
        {"model": ALIAS, "prompt": "The appliance", "max_tokens": 4, "min_tokens": 4},
    )
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4


def test_streaming_sends_sse_chunks_ending_in_done(server: Launched) -> None:
    stream = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with server.open("/v1/chat/completions", stream) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        lines = [line.decode().rstrip("\r\n") for line in answer]
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == ALIAS for c in chunks)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert len(finishes) == 1
    assert finishes[0] in {"length", "stop"}
    usage = chunks[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= 6


def test_sigterm_stops_the_server_cleanly(gguf_model: Path) -> None:
    port = free_port()
    launched = Launched(launch(gguf_model, port), port)
    try:
        wait_healthy(launched)
        launched.process.send_signal(signal.SIGTERM)
        assert launched.process.wait(timeout=20) == 0
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        launched.process.kill()
        launched.process.wait(timeout=10)


def test_a_missing_model_is_refused_before_anything_starts(tmp_path: Path) -> None:
    process = launch(tmp_path / "absent.gguf", free_port())
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "absent.gguf: no such file" in output


def test_a_file_that_is_not_gguf_fails_to_start(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model" * 100)
    process = launch(bogus, free_port())
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "bogus.gguf" in output


@pytest.fixture(scope="module")
def embedder(gguf_model: Path) -> Iterator[Launched]:
    """The tiny model started as the role starts a ``task: embedding`` model."""
    port = free_port()
    launched = Launched(launch(gguf_model, port, "--embedding", "--pooling", "mean"), port)
    try:
        wait_healthy(launched)
        yield launched
    finally:
        launched.process.kill()
        launched.process.wait(timeout=10)


def test_an_embedding_model_answers_one_pooled_vector_per_input(embedder: Launched) -> None:
    body = embedder.post("/v1/embeddings", {"model": ALIAS, "input": ["hello world", "two"]})
    assert body["object"] == "list"
    assert [item["index"] for item in body["data"]] == [0, 1]
    vectors = [item["embedding"] for item in body["data"]]
    assert len(vectors[0]) == len(vectors[1]) == 256  # the tiny model's hidden size
    assert vectors[0] != vectors[1]
    assert body["usage"]["prompt_tokens"] > 0


def test_a_chat_model_refuses_embeddings(server: Launched) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        server.post("/v1/embeddings", {"model": ALIAS, "input": "hello"})
    assert refused.value.code == 501
    assert "--embeddings" in refused.value.read().decode()


def test_the_gateway_routes_embeddings_to_the_embedding_model(
    embedder: Launched, tmp_path: Path
) -> None:
    route = {"name": "embed", "digest": STAND_IN_DIGEST, "backend": embedder.url("/")}
    route |= {"backend_model": ALIAS, "task": "embedding"}
    with gateway_in_thread(tmp_path, embedder.url("/"), models=[route]) as gateway:
        body = json.dumps({"model": "embed", "input": ["audited text"]}).encode()
        reply = gateway.post("/v1/embeddings", body, key=gateway.key)
        assert reply is not None and reply.status == 200, reply
        (item,) = reply.json()["data"]
        assert len(item["embedding"]) == 256
        record = gateway.record_of(reply)
        chat = {"model": "embed", "messages": [{"role": "user", "content": "hi"}]}
        refused = gateway.post("/v1/chat/completions", json.dumps(chat).encode(), key=gateway.key)
        assert refused is not None and refused.status == 400
        assert refused.json()["error"]["code"] == "wrong_model_task"
        assert gateway.record_of(refused)["status"] == 400
    assert (record["path"], record["model"], record["status"]) == ("/v1/embeddings", "embed", 200)
    assert record["prompt_tokens"] == reply.json()["usage"]["prompt_tokens"]
