"""Preflight's verdict on one node: the models planned for it against the GPUs nvidia-smi
reports there (the stand-in's answer, the H200's values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.sizing.judge import judge_host
from appliance.sizing.model import model_facts, model_files
from tests.fixtures import model_configs as published
from tests.fixtures.model_files import compressed_fp8, dense, write_checkpoint

H200 = "NVIDIA H200, 143771, 616\n"


def facts(root: Path, name: str, config: dict[str, Any], fp8: bool = False) -> dict[str, Any]:
    tensors = dense(config)
    write_checkpoint(root / name, config, compressed_fp8(tensors) if fp8 else tensors)
    return model_facts(name, model_files(root / name)).as_dict()


def test_a_model_too_big_for_one_h200_is_refused_with_the_numbers_and_the_options(
    tmp_path: Path,
) -> None:
    verdict = judge_host({"models": [facts(tmp_path, "llama-70b", published.LLAMA_3_1_70B)]}, H200)
    assert not verdict["ok"]
    assert verdict["message"] == (
        "model llama-70b (131.4 GiB of weights, 320 KiB of KV cache per token) does not fit "
        "1x NVIDIA H200 (139.8 GiB each as CUDA counts, 0.9 of it for vLLM): at tensor parallel "
        "1, weights 131.4 GiB + activations 2.0 GiB + non-torch 0.3 GiB exceed the 125.8 GiB "
        "vLLM may use per GPU. Options: more GPUs (2 of these at tensor parallel 2 would serve "
        "it); a quantised checkpoint (AWQ, GPTQ or FP8 weights)."
    )
    # The same model on two of them: tensor parallel 2, its whole context.
    two = judge_host({"models": [facts(tmp_path, "again", published.LLAMA_3_1_70B)]}, H200 * 2)
    assert two["ok"]
    assert two["settings"]["again"] == {
        "tensor_parallel_size": 2,
        "max_model_len": 131072,
        "gpu_memory_utilization": 0.9,
        "kv_cache_dtype": "auto",
    }


def test_a_kv_cache_too_small_for_the_asked_context_names_the_context_options(
    tmp_path: Path,
) -> None:
    model = facts(tmp_path, "llama-70b-fp8", published.LLAMA_3_3_70B_FP8, fp8=True)
    explicit = {"gpu_memory_utilization": 0.6, "max_model_len": 131072}
    verdict = judge_host({"models": [model], "explicit": explicit}, H200)
    assert not verdict["ok"]
    message = verdict["message"]
    assert "at tensor parallel 1 the KV cache holds" in message
    assert "tokens per request, fewer than the 131072 required" in message
    assert "runtime_vllm_kv_cache_dtype: fp8 (half the KV cache per token)" in message
    assert "a shorter context (runtime_vllm_max_model_len)" in message
    assert (
        "other inventory settings than runtime_vllm_gpu_memory_utilization: 0.6, "
        "runtime_vllm_max_model_len: 131072" in message
    )


def test_models_on_one_node_share_its_gpus(tmp_path: Path) -> None:
    a = facts(tmp_path, "a", published.LLAMA_3_1_8B)
    b = facts(tmp_path, "b", published.QWEN2_5_7B)
    verdict = judge_host({"models": [a, b]}, H200)
    assert verdict["ok"]
    assert {s["gpu_memory_utilization"] for s in verdict["settings"].values()} == {0.45}


def test_inventory_settings_are_kept(tmp_path: Path) -> None:
    model = facts(tmp_path, "m", published.LLAMA_3_1_8B)
    explicit = {"max_model_len": 2048, "kv_cache_dtype": "fp8"}
    verdict = judge_host({"models": [model], "explicit": explicit}, H200)
    assert verdict["settings"]["m"]["max_model_len"] == 2048
    assert verdict["settings"]["m"]["kv_cache_dtype"] == "fp8"


@pytest.mark.parametrize("answer", ["", "NVIDIA H200, ???, 616"])
def test_gpu_facts_that_do_not_parse_are_an_error_not_a_guess(answer: str) -> None:
    from appliance.errors import SizingError

    with pytest.raises(SizingError):
        judge_host({"models": []}, answer)
