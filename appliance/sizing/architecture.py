"""What a model's architecture means for memory: its attention layers' KV cache per token, and
the sizes the activation estimate needs. Read from a Hugging Face ``config.json`` or from GGUF
metadata.

One token costs, in each attention layer: K and V for each KV head (grouped-query attention
keeps fewer KV heads than query heads), ``kv_heads x (k_dim + v_dim)`` values; with DeepSeek's
multi-head latent attention (MLA) one compressed vector, ``kv_lora_rank + qk_rope_head_dim``
values, whatever the head count. A sliding-window layer keeps only its window of tokens per
sequence. Mixture-of-experts changes the weights (read from the files) and the activations, not
the KV cache. Multimodal configs nest the language model under ``text_config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.errors import SizingError


@dataclass(frozen=True)
class LayerKv:
    """The KV cache of one kind of attention layer."""

    count: int  # layers of this kind
    kv_heads: int  # 1 for MLA (one latent vector per token)
    k_dim: int  # per head; for MLA the whole latent (kv_lora_rank + qk_rope_head_dim)
    v_dim: int  # 0 for MLA: the latent is not split into K and V
    window: int | None = None  # sliding-window layers: tokens kept per sequence
    mla: bool = False

    def bytes_per_token(self, dtype_bytes: float, tensor_parallel: int = 1) -> float:
        """One token in one such layer on one GPU. vLLM gives each GPU max(1, heads // tp) KV
        heads (replicated when there are fewer heads than GPUs) and replicates MLA's latent."""
        heads = self.kv_heads if self.mla else max(1, self.kv_heads // tensor_parallel)
        return heads * (self.k_dim + self.v_dim) * dtype_bytes


@dataclass(frozen=True)
class Architecture:
    family: str  # config's model_type, or GGUF's general.architecture
    layers: int
    hidden_size: int
    attention_heads: int
    vocab_size: int
    intermediate_size: int  # of the dense MLP (0 when every layer is MoE)
    max_context: int  # the longest sequence the model takes (vLLM's derived max_model_len)
    kv: tuple[LayerKv, ...]
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    shared_intermediate_size: int = 0
    dtype: str = "bfloat16"  # the checkpoint's torch_dtype
    quantization: str | None = None  # quantization_config.quant_method
    notes: tuple[str, ...] = field(default=())

    def kv_bytes_per_token(self, dtype_bytes: float, tensor_parallel: int = 1) -> float:
        """Every attention layer's share of one token, on one GPU."""
        return sum(
            layer.count * layer.bytes_per_token(dtype_bytes, tensor_parallel) for layer in self.kv
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        values = dict(data)
        values["kv"] = tuple(LayerKv(**layer) for layer in values["kv"])
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)


# Keys vLLM reads for the longest sequence (vllm/config/model.py, _get_and_verify_max_len):
# the smallest present wins.
_MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def from_config(config: dict[str, Any], where: str = "config.json") -> Architecture:
    """The architecture a Hugging Face ``config.json`` describes."""
    if not isinstance(config, dict):
        raise _missing(where, "the document", "a JSON object")
    language = _language(config)

    def number(*keys: str, default: int | None = None) -> int:
        for key in keys:
            value = language.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        if default is not None:
            return default
        raise _missing(where, " or ".join(keys), "a positive integer")

    layers = number("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    hidden = number("hidden_size", "n_embd", "d_model")
    heads = number("num_attention_heads", "n_head", "num_heads")
    kv_heads = number(
        "num_key_value_heads",
        "num_kv_heads",
        "n_head_kv",
        default=1 if language.get("multi_query") else heads,
    )
    head_dim = number("head_dim", default=hidden // heads)
    kv: tuple[LayerKv, ...]
    notes: list[str] = []
    if isinstance(language.get("kv_lora_rank"), int):
        latent = language["kv_lora_rank"] + number("qk_rope_head_dim")
        kv = (LayerKv(layers, 1, latent, 0, mla=True),)
    else:
        v_dim = number("v_head_dim", default=head_dim)
        kv = _kv_layers(language, layers, kv_heads, head_dim, v_dim, notes)
    experts = number("num_local_experts", "num_experts", "n_routed_experts", default=0)
    moe_size = number("moe_intermediate_size", default=0)
    shared = number("shared_expert_intermediate_size", default=0) or (
        number("n_shared_experts", default=0) * moe_size
    )
    dtype = language.get("torch_dtype") or language.get("dtype") or "bfloat16"
    quantization = (config.get("quantization_config") or {}).get("quant_method")
    return Architecture(
        family=str(language.get("model_type") or config.get("model_type") or "unknown"),
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        vocab_size=number("vocab_size", "padded_vocab_size"),
        intermediate_size=number("intermediate_size", "ffn_hidden_size", "n_inner", default=0),
        max_context=_max_context(language, where),
        kv=kv,
        experts=experts,
        experts_per_token=number("num_experts_per_tok", "moe_topk", default=0) if experts else 0,
        expert_intermediate_size=moe_size
        or (number("intermediate_size", default=0) if experts else 0),
        shared_intermediate_size=shared,
        dtype=str(dtype),
        quantization=str(quantization) if quantization else None,
        notes=tuple(notes),
    )


def _language(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config: multimodal models nest it, and leave the dtype
    and quantization at the top."""
    for key in ("text_config", "llm_config", "language_config"):
        nested = config.get(key)
        if isinstance(nested, dict):
            merged = {k: v for k, v in config.items() if k in ("torch_dtype", "dtype")}
            return merged | nested
    return config


def _kv_layers(
    language: dict[str, Any],
    layers: int,
    kv_heads: int,
    head_dim: int,
    v_dim: int,
    notes: list[str],
) -> tuple[LayerKv, ...]:
    window = language.get("sliding_window")
    if not isinstance(window, int) or window <= 0 or language.get("use_sliding_window") is False:
        return (LayerKv(layers, kv_heads, head_dim, v_dim),)
    kinds = language.get("layer_types")
    if isinstance(kinds, list) and len(kinds) == layers:
        sliding = sum(1 for kind in kinds if kind == "sliding_attention")
    elif isinstance(language.get("sliding_window_pattern"), int):
        # Gemma 3, Cohere 2: every pattern-th layer is global, the others slide.
        pattern = language["sliding_window_pattern"]
        sliding = sum(1 for i in range(layers) if (i + 1) % pattern)
    elif language.get("model_type") == "gemma2":
        # Gemma 2 alternates, starting with a sliding layer (transformers' Gemma2 layers).
        sliding = (layers + 1) // 2
    else:
        sliding = layers  # Mistral 7B v0.1, Phi-3: every layer slides
    notes.append(f"{sliding} of {layers} layers keep a sliding window of {window} tokens")
    full = layers - sliding
    return tuple(
        layer
        for layer in (
            LayerKv(full, kv_heads, head_dim, v_dim),
            LayerKv(sliding, kv_heads, head_dim, v_dim, window=window),
        )
        if layer.count
    )


def _max_context(language: dict[str, Any], where: str) -> int:
    found = [
        language[key]
        for key in _MAX_LEN_KEYS
        if isinstance(language.get(key), int) and language[key] > 0
    ]
    if not found:
        raise _missing(where, "max_position_embeddings", "a positive integer")
    length = int(min(found))
    scaling = language.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    factor = scaling.get("factor")
    # vLLM stretches the length by the RoPE scaling factor, except for the types whose config
    # already states the stretched length; YaRN scales its original length.
    # Gemma 3 states its scaled length already (vLLM skips it the same way).
    scaled = not str(language.get("model_type", "")).startswith("gemma3")
    exempt = (None, "su", "longrope", "llama3", "mrope")
    if scaled and isinstance(factor, int | float) and kind not in exempt:
        if kind == "yarn" and isinstance(scaling.get("original_max_position_embeddings"), int):
            length = int(scaling["original_max_position_embeddings"])
        length = int(length * factor)
    return length


def from_gguf_metadata(
    metadata: dict[str, Any], lengths: dict[str, int], where: str
) -> Architecture:
    """The architecture GGUF metadata describes (keys as llama.cpp writes them)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise _missing(where, "general.architecture", "a string")

    def number(key: str, default: int | None = None) -> int:
        value = metadata.get(f"{arch}.{key}")
        if isinstance(value, list) and value:
            value = max(value)  # per-layer values: the largest is the safe one to size for
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if default is not None:
            return default
        raise _missing(where, f"{arch}.{key}", "a positive integer")

    layers = number("block_count")
    hidden = number("embedding_length")
    heads = number("attention.head_count")
    kv_heads = number("attention.head_count_kv", default=heads)
    k_dim = number("attention.key_length", default=hidden // heads)
    vocab = lengths.get("tokenizer.ggml.tokens") or number("vocab_size")
    notes: list[str] = []
    if f"{arch}.attention.kv_lora_rank" in metadata:
        latent = number("attention.kv_lora_rank") + number("rope.dimension_count")
        kv: tuple[LayerKv, ...] = (LayerKv(layers, 1, latent, 0, mla=True),)
    else:
        config: dict[str, Any] = {"model_type": arch}
        window = metadata.get(f"{arch}.attention.sliding_window")
        if isinstance(window, int):
            config["sliding_window"] = window
            if arch == "gemma3":
                config["sliding_window_pattern"] = 6  # llama.cpp's hparams for gemma3
        v_dim = number("attention.value_length", default=k_dim)
        kv = _kv_layers(config, layers, kv_heads, k_dim, v_dim, notes)
    experts = number("expert_count", default=0)
    return Architecture(
        family=arch,
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        vocab_size=vocab,
        intermediate_size=number("feed_forward_length", default=0),
        max_context=number("context_length"),
        kv=kv,
        experts=experts,
        experts_per_token=number("expert_used_count", default=0) if experts else 0,
        expert_intermediate_size=number("expert_feed_forward_length", default=0),
        dtype="float16",
        quantization="gguf",
        notes=tuple(notes),
    )


def _missing(where: str, key: str, what: str) -> SizingError:
    return SizingError(
        f"{where}: {key} is missing or not {what}; sizing needs it to count the KV cache",
        hint="use the model's original config.json (or GGUF metadata)",
    )
