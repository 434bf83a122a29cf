"""config.json and GGUF metadata to KV cache layouts: which layers slide, how long a model's
context is, where a multimodal config keeps its language model."""

from __future__ import annotations

import pytest

from appliance.errors import SizingError
from appliance.sizing.architecture import LayerKv, from_config, from_gguf_metadata
from tests.fixtures import model_configs as published


def test_gemma_2_alternates_sliding_and_global_layers() -> None:
    arch = from_config(published.GEMMA_2_9B)
    assert arch.kv == (LayerKv(21, 8, 256, 256), LayerKv(21, 8, 256, 256, window=4096))


def test_gemma_3_nests_its_language_model_and_slides_five_layers_in_six() -> None:
    arch = from_config(published.GEMMA_3_27B)
    # 62 layers: layers 5, 11, ..., 59 are global (10), the other 52 keep 1024 tokens.
    assert arch.kv == (LayerKv(10, 16, 128, 128), LayerKv(52, 16, 128, 128, window=1024))
    assert arch.family == "gemma3_text"
    assert arch.dtype == "bfloat16"  # from the top level, which the nested config leaves out
    # 62 x 16 x (128 + 128) x 2 B; Gemma 3 states its scaled length itself.
    assert arch.kv_bytes_per_token(2) == 507_904
    assert arch.max_context == 131_072


def test_layer_types_name_each_layer() -> None:
    config = published.LLAMA_3_1_8B | {
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * 16,
    }
    assert from_config(config).kv == (
        LayerKv(16, 8, 128, 128),
        LayerKv(16, 8, 128, 128, window=128),
    )


def test_a_sliding_window_switched_off_is_ignored() -> None:
    assert from_config(published.QWEN2_5_7B).kv == (LayerKv(28, 4, 128, 128),)


def test_mla_caches_one_latent_whatever_the_heads_and_tensor_parallelism() -> None:
    arch = from_config(published.DEEPSEEK_V3)
    assert arch.kv == (LayerKv(61, 1, 576, 0, mla=True),)
    # vLLM replicates the latent on every GPU; grouped-query heads split instead.
    assert arch.kv_bytes_per_token(2, tensor_parallel=8) == 61 * 576 * 2
    llama = from_config(published.LLAMA_3_1_8B)
    assert llama.kv_bytes_per_token(2, tensor_parallel=2) == 131_072 / 2
    # 8 KV heads over 16 GPUs: each keeps one (vLLM replicates rather than splits a head).
    assert llama.kv_bytes_per_token(2, tensor_parallel=16) == 32 * 1 * 256 * 2


def test_moe_sizes_are_read_for_the_activation_estimate() -> None:
    arch = from_config(published.DEEPSEEK_V3)
    assert (arch.experts, arch.experts_per_token, arch.expert_intermediate_size) == (256, 8, 2048)
    assert arch.shared_intermediate_size == 2048
    mixtral = from_config(published.MIXTRAL_8X7B)
    assert (mixtral.experts, mixtral.expert_intermediate_size) == (8, 14336)


@pytest.mark.parametrize(
    ("scaling", "length"),
    [
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 131072),
        ({"type": "linear", "factor": 2.0}, 65536),
        ({"rope_type": "llama3", "factor": 8.0}, 32768),
        ({"rope_type": "longrope", "factor": 4.0}, 32768),
    ],
)
def test_rope_scaling_stretches_the_context_as_vllm_does(
    scaling: dict[str, object], length: int
) -> None:
    config = published.QWEN2_5_7B | {"rope_scaling": scaling}
    assert from_config(config).max_context == length


def test_a_config_without_the_numbers_names_what_is_missing() -> None:
    config = {k: v for k, v in published.LLAMA_3_1_8B.items() if k != "num_hidden_layers"}
    with pytest.raises(SizingError) as caught:
        from_config(config, "model m: config.json")
    assert caught.value.message == (
        "model m: config.json: num_hidden_layers or n_layer or num_layers or n_layers is missing "
        "or not a positive integer; sizing needs it to count the KV cache"
    )


def test_gguf_metadata_gives_the_same_layout_as_the_config() -> None:
    metadata = {
        "general.architecture": "gemma2",
        "gemma2.block_count": 42,
        "gemma2.embedding_length": 3584,
        "gemma2.feed_forward_length": 14336,
        "gemma2.attention.head_count": 16,
        "gemma2.attention.head_count_kv": 8,
        "gemma2.attention.key_length": 256,
        "gemma2.attention.value_length": 256,
        "gemma2.attention.sliding_window": 4096,
        "gemma2.context_length": 8192,
    }
    arch = from_gguf_metadata(metadata, {"tokenizer.ggml.tokens": 256000}, "model g")
    assert arch.kv == from_config(published.GEMMA_2_9B).kv
    assert (arch.vocab_size, arch.max_context) == (256000, 8192)
