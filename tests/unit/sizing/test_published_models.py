"""Published models, each sized from its config.json and a checkpoint with its real tensor list,
against KV bytes per token and weight bytes computed by hand (the arithmetic is in the
comments; parameter counts agree with what each model's card publishes).

KV bytes per token, per GPU, --kv-cache-dtype auto (16-bit values):
    attention layers x KV heads x (K dim + V dim) x 2 bytes; with MLA: layers x latent x 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.sizing.model import model_facts, model_files
from tests.fixtures import model_configs as published
from tests.fixtures.model_files import Tensor, awq, deepseek_v3, dense, gptq, write_checkpoint

ROWS: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], list[Tensor]], int, int, int]] = [
    # (model, config, its tensors, KV bytes per token, weight bytes, model's maximum context)
    (
        # Dense, grouped-query attention (32 query heads share 8 KV heads).
        # KV: 32 layers x 8 heads x (128 + 128) x 2 B = 131,072.
        # Weights: embed and lm_head 128256 x 4096 = 525,336,576 each; per layer q, o
        # 4096 x 4096 = 16,777,216 each, k, v 1024 x 4096 = 4,194,304 each, gate, up, down
        # 14336 x 4096 = 58,720,256 each, 2 norms x 4096 -> 218,112,000; x 32 = 6,979,584,000;
        # final norm 4,096: 8,030,261,248 parameters (8.03B) x 2 B (bf16) = 16,060,522,496.
        # Context: 131072 (rope_type llama3 states the stretched length itself).
        "Llama-3.1-8B",
        published.LLAMA_3_1_8B,
        dense,
        131_072,
        16_060_522_496,
        131_072,
    ),
    (
        # KV: 80 layers x 8 heads x 256 x 2 B = 327,680.
        # Weights: embed and lm_head 128256 x 8192 = 1,050,673,152 each; per layer q, o 8192^2 =
        # 67,108,864 each, k, v 1024 x 8192 = 8,388,608 each, mlp 3 x 28672 x 8192 =
        # 704,643,072, norms 16,384 -> 855,654,400; x 80 = 68,452,352,000; + final norm 8,192:
        # 70,553,706,496 parameters (70.6B) x 2 B = 141,107,412,992.
        "Llama-3.1-70B",
        published.LLAMA_3_1_70B,
        dense,
        327_680,
        141_107_412_992,
        131_072,
    ),
    (
        # Sliding window on every layer: the cost per token is the same, 32 x 8 x 256 x 2 B =
        # 131,072, but a request keeps at most its last 4096 tokens (plus one batch).
        # Weights: embed and lm_head 32000 x 4096 = 131,072,000 each; the layers as Llama-3.1-8B,
        # 6,979,584,000; final norm 4,096: 7,241,732,096 parameters (7.24B) x 2 = 14,483,464,192.
        "Mistral-7B-v0.1",
        published.MISTRAL_7B_V0_1,
        dense,
        131_072,
        14_483_464_192,
        32_768,
    ),
    (
        # Mixed sliding (21 layers, 4096 tokens) and global (21 layers) attention, head_dim 256.
        # KV: 42 x 8 heads x (256 + 256) x 2 B = 344,064.
        # Weights: tied embedding 256000 x 3584 = 917,504,000; per layer q, o 4096 x 3584 =
        # 14,680,064 each, k, v 2048 x 3584 = 7,340,032 each, mlp 3 x 14336 x 3584 =
        # 154,140,672, 4 norms 14,336 -> 198,195,200; x 42 = 8,324,198,400; + final norm
        # 3,584: 9,241,705,984 parameters (9.24B) x 2 = 18,483,411,968.
        "gemma-2-9b-it",
        published.GEMMA_2_9B,
        dense,
        344_064,
        18_483_411_968,
        8_192,
    ),
    (
        # MLA: each layer caches one latent of kv_lora_rank 512 + qk_rope_head_dim 64, whatever
        # its 128 heads: 61 x 576 x 2 B = 70,272.
        # Weights (FP8 e4m3, 1 B each, plus a float32 scale per 128x128 block): per layer the
        # attention and its norms take 187,183,840 B (q_a 1536x7168 = 11,010,048 + scales
        # 12x56x4 = 2,688; q_a norm 3,072; q_b 24576x1536 = 37,748,736 + 9,216; kv_a 576x7168
        # = 4,128,768 + 1,120; kv_a norm 1,024; kv_b 32768x512 = 16,777,216 + 4,096; o
        # 7168x16384 = 117,440,512 + 28,672; 2 norms 28,672); 3 dense MLPs 3 x (18432x7168 +
        # 144x56x4) = 396,458,496 each; 58 MoE MLPs: router 256x7168x2 = 3,670,016, bias 1,024,
        # 257 experts (256 routed, 1 shared) x 3 x (2048x7168 + 16x56x4) = 11,321,092,608 ->
        # 11,324,763,648 each; embed and lm_head 129280x7168x2 = 1,853,358,080 each; norm
        # 14,336. 61 x 187,183,840 + 3 x 396,458,496 + 58 x 11,324,763,648 + 2 x 1,853,358,080
        # + 14,336 = 673,150,611,808. The checkpoint's multi-token-prediction layer (15.4 GB;
        # 688.6 GB in all, 685B stored elements) is left out: vLLM loads it only for
        # speculative decoding. Context: YaRN, 4096 x factor 40 = 163,840.
        "DeepSeek-V3",
        published.DEEPSEEK_V3,
        deepseek_v3,
        70_272,
        673_150_611_808,
        163_840,
    ),
    (
        # Mixture of experts: the KV cache is a dense model's, 32 x 8 x 256 x 2 B = 131,072;
        # the weights hold every expert. Per layer attention 2 x 16,777,216 + 2 x 4,194,304 =
        # 41,943,040, router 8 x 4096 = 32,768, 8 experts x 3 x 58,720,256 = 1,409,286,144,
        # norms 8,192 -> 1,451,270,144; x 32 = 46,440,644,608; + embed and lm_head 2 x
        # 131,072,000 + norm 4,096: 46,702,792,704 parameters (46.7B) x 2 = 93,405,585,408.
        "Mixtral-8x7B",
        published.MIXTRAL_8X7B,
        dense,
        131_072,
        93_405_585_408,
        32_768,
    ),
    (
        # 28 query heads over 4 KV heads; sliding_window is set but use_sliding_window false.
        # KV: 28 x 4 x 256 x 2 B = 57,344.
        # Weights: embed and lm_head 152064 x 3584 = 544,997,376 each; per layer q, o 3584^2 =
        # 12,845,056 each, k, v 512 x 3584 = 1,835,008 each, biases 3584 + 512 + 512 = 4,608,
        # mlp 3 x 18944 x 3584 = 203,685,888, norms 7,168 -> 233,057,792; x 28 =
        # 6,525,618,176; + norm 3,584: 7,615,616,512 parameters (7.62B) x 2 = 15,231,233,024.
        "Qwen2.5-7B",
        published.QWEN2_5_7B,
        dense,
        57_344,
        15_231_233_024,
        32_768,
    ),
    (
        # AWQ 4-bit, group 128: a linear layer of in x out weights stores qweight int32
        # in x out/8 (in*out/2 B), qzeros int32 in/128 x out/8 (in*out/256 B) and scales fp16
        # in/128 x out (in*out/64 B): in*out x 0.51953125 B. Per layer in*out sums to
        # 218,103,808 -> 113,311,744 B; x 32 = 3,625,975,808. fp16: embed and lm_head
        # 2 x 525,336,576 x 2 = 2,101,346,304, norms 266,240 x 2 = 532,480. Total 5,727,854,592.
        "Llama-3.1-8B AWQ-INT4",
        published.LLAMA_3_1_8B_AWQ,
        lambda config: awq(dense(config)),
        131_072,
        5_727_854_592,
        131_072,
    ),
    (
        # GPTQ 4-bit, group 128, act-order: as AWQ (in*out x 0.51953125 B) plus g_idx int32 of
        # `in` entries. Per layer 113,311,744 + g_idx (6 x 4096 + 14336) x 4 = 155,648 ->
        # 113,467,392; x 32 = 3,630,956,544. fp16: embed and lm_head 2 x 131,072,000 x 2 =
        # 524,288,000, norms 532,480. Total 4,155,777,024. KV as Mistral's: 131,072.
        "Mistral-7B-v0.2 GPTQ",
        published.MISTRAL_7B_V0_2_GPTQ,
        lambda config: gptq(dense(config)),
        131_072,
        4_155_777_024,
        32_768,
    ),
]


@pytest.mark.parametrize(
    ("name", "config", "tensors", "kv_per_token", "weights", "context"),
    ROWS,
    ids=[row[0] for row in ROWS],
)
def test_sizing_a_published_model_matches_the_hand_count(
    tmp_path: Path,
    name: str,
    config: dict[str, Any],
    tensors: Callable[[dict[str, Any]], list[Tensor]],
    kv_per_token: int,
    weights: int,
    context: int,
) -> None:
    directory = write_checkpoint(tmp_path / "model", config, tensors(config))
    facts = model_facts(name, model_files(directory))
    assert facts.weight_bytes == weights
    assert facts.architecture.kv_bytes_per_token(2) == kv_per_token
    # --kv-cache-dtype fp8 stores one byte per value.
    assert facts.architecture.kv_bytes_per_token(1) == kv_per_token / 2
    assert facts.architecture.max_context == context


def test_the_table_covers_each_kind_of_attention_and_weights() -> None:
    families = {row[1]["model_type"] for row in ROWS}
    quantised = {row[1].get("quantization_config", {}).get("quant_method") for row in ROWS}
    assert len(ROWS) >= 8
    assert {"llama", "mistral", "gemma2", "deepseek_v3", "mixtral", "qwen2"} <= families
    assert {"awq", "gptq", "fp8"} <= quantised
