"""vLLM's memory budget: checked against what vLLM 0.19.0 logged on H100 80GB (the runs
benchmarks/sizing.py compares in full), and the block arithmetic of its KV cache manager."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.sizing.architecture import from_config
from appliance.sizing.gpus import GIB, GPU_TYPES, GpuSet
from appliance.sizing.model import ModelFacts, model_facts, model_files
from appliance.sizing.vllm import Settings, _Cache, choose, estimate
from tests.fixtures import model_configs as published
from tests.fixtures.model_files import dense, write_checkpoint

H100 = GpuSet(GPU_TYPES["h100"], 1)
H200 = GpuSet(GPU_TYPES["h200"], 1)


@pytest.fixture(scope="module")
def llama_8b(tmp_path_factory: pytest.TempPathFactory) -> ModelFacts:
    path = tmp_path_factory.mktemp("llama8b")
    write_checkpoint(path, published.LLAMA_3_1_8B, dense(published.LLAMA_3_1_8B))
    return model_facts("Llama-3.1-8B", model_files(path))


@pytest.fixture(scope="module")
def llama_70b(tmp_path_factory: pytest.TempPathFactory) -> ModelFacts:
    path = tmp_path_factory.mktemp("llama70b")
    write_checkpoint(path, published.LLAMA_3_1_70B, dense(published.LLAMA_3_1_70B))
    return model_facts("Llama-3.1-70B", model_files(path))


def test_the_h100_total_is_what_cuda_reported_to_vllm() -> None:
    # vLLM 0.19.0 logged total_memory=79.19GiB on an H100 80GB HBM3 (81559 MiB in nvidia-smi).
    assert round(GPU_TYPES["h100"].cuda_bytes / GIB, 2) == 79.19


def test_llama_3_1_8b_on_one_h100_is_within_5_percent_of_vllms_kv_cache(
    llama_8b: ModelFacts,
) -> None:
    # vLLM 0.19.0, --gpu-memory-utilization 0.95 --max-model-len 8192: "Available KV cache
    # memory: 58.11 GiB", "GPU KV cache size: 476,016 tokens".
    (e,) = estimate(llama_8b, H100, Settings(utilization=0.95, context=8192))
    assert abs(e.kv_cache_bytes / GIB / 58.11 - 1) < 0.05
    assert abs(e.kv_cache_tokens / 476_016 - 1) < 0.05
    assert e.fits
    assert e.flags() == [
        "--tensor-parallel-size", "1", "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.95", "--kv-cache-dtype", "auto",
    ]  # fmt: skip


def test_vllms_block_counts_for_sliding_and_global_layers() -> None:
    # What vLLM logged with these KV cache sizes (llm-d-planner's v0.19.0 runs; the GiB are
    # rounded to 2 decimals, so the block counts may differ by one or two): Gemma 2 makes two
    # groups of 21 layers; Gemma 3 27B's 10 global and 52 sliding layers make groups of 10, the
    # last sliding one padded (7 groups); tokens = blocks // groups x 16.
    gemma2 = from_config(published.GEMMA_2_9B).kv
    cache = _Cache(gemma2, 2, 1, 8192, int(54.12 * GIB))
    assert abs(cache.blocks - 21_110) <= 2
    assert cache.reported_tokens == 168_880
    gemma3 = from_config(published.GEMMA_3_27B).kv
    cache = _Cache(gemma3, 2, 1, 8192, int(19.53 * GIB))
    assert abs(cache.blocks - 15_997) <= 2
    assert cache.reported_tokens == 36_560


def test_a_sliding_window_bounds_what_one_request_keeps() -> None:
    mistral = from_config(published.MISTRAL_7B_V0_1).kv
    cache = _Cache(mistral, 2, 1, 2048, 10 * GIB)
    # A request keeps at most window - 1 + one batch of tokens (+1 block), however long.
    assert cache.blocks_for(32_768) == cache.blocks_for(8192) == -(-(4095 + 2048) // 16) + 1
    llama = from_config(published.LLAMA_3_1_8B).kv
    assert _Cache(llama, 2, 1, 2048, 10 * GIB).blocks_for(32_768) == 2048


def test_a_70b_model_needs_two_h200s(llama_70b: ModelFacts) -> None:
    (one,) = estimate(llama_70b, H200)
    assert not one.fits
    assert one.reason.startswith("weights 131.4 GiB + activations")
    assert one.max_context == 0
    two = estimate(llama_70b, GpuSet(GPU_TYPES["h200"], 2))
    assert [e.tensor_parallel_size for e in two] == [1, 2]
    chosen = choose(two, 4096)
    assert chosen is not None and chosen.tensor_parallel_size == 2 and chosen.fits


def test_fp8_kv_cache_holds_twice_the_tokens(llama_8b: ModelFacts) -> None:
    (auto,) = estimate(llama_8b, H200)
    (fp8,) = estimate(llama_8b, H200, Settings(kv_cache_dtype="fp8"))
    assert fp8.kv_cache_tokens == pytest.approx(2 * auto.kv_cache_tokens, abs=16)


def test_a_long_context_at_high_concurrency_is_refused_with_the_numbers(
    llama_8b: ModelFacts,
) -> None:
    (e,) = estimate(llama_8b, GpuSet(GPU_TYPES["l4"], 1), Settings(context=8192, concurrency=64))
    assert not e.fits
    assert e.reason.startswith("64 request(s) of 8192 tokens need 64.0 GiB of KV cache per GPU;")
    assert 0 < e.max_context < 8192
    assert e.max_concurrency < 64


def test_tensor_parallel_sizes_that_do_not_divide_the_heads_are_skipped(tmp_path: Path) -> None:
    config = published.QWEN2_5_7B
    write_checkpoint(tmp_path, config, dense(config))
    facts = model_facts("qwen", model_files(tmp_path))
    # 28 attention heads: 8 GPUs cannot split them.
    assert [e.tensor_parallel_size for e in estimate(facts, GpuSet(GPU_TYPES["h100"], 8))] == [
        1,
        2,
        4,
    ]
