"""Generate a tiny, random, deterministic Llama model for the demo and the tests.

    python examples/tiny_model.py gguf OUT.gguf     one GGUF file, for llama.cpp
    python examples/tiny_model.py hf OUTDIR         a Hugging Face checkpoint, for vLLM

No hub is reachable from the machines that build or test the appliance, so the model is made
here: a byte-level BPE tokenizer trained on a fixed text, and weights drawn from a fixed seed.
Every run writes byte-identical files, so a bundle built twice pins the same digests. Both
formats carry the same weights (rounded to float16 once), so the runtimes agree on greedy output.
The weights are random: the text it writes is gibberish; test structure, never the words.

Needs numpy, tokenizers, and gguf or safetensors (the project's `models` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SEED = 20261127
NAME = "appliance-tiny-llama"
VOCAB_SIZE = 384
HIDDEN = 256
INTERMEDIATE = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
CONTEXT = 512
RMS_EPS = 1e-5
ROPE_THETA = 10000.0
SPECIALS = ["<unk>", "<s>", "</s>"]
UNK, BOS, EOS = 0, 1, 2
# A minimal template both llama.cpp (minja) and transformers (jinja2) render the same way.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# The tokenizer's training text: fixed, so the merges (and so the vocabulary) are too.
CORPUS = [
    "The appliance answers prompts inside the boundary and records who asked what, and when.",
    "Every artifact is pinned by its digest; the manifest is signed; nothing leaves the host.",
    "A model is read from the local store, never from a hub. The gateway checks each key.",
    "user: hello, how are you today? assistant: I am a small random model, so I speak nonsense.",
    "system: you are a helpful assistant. Answer briefly, in plain words, with numbers 0123456789.",
]


def train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 8, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    if tokenizer.get_vocab_size() > VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tokenizer.get_vocab_size()} tokens > {VOCAB_SIZE}")
    return tokenizer


def vocabulary(tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    """Tokens by id (padded to VOCAB_SIZE) and merges as 'a b' strings, from tokenizer.json."""
    model = json.loads(tokenizer.to_str())["model"]
    by_id = {index: token for token, index in model["vocab"].items()}
    tokens = [by_id.get(i, f"<pad{i}>") for i in range(VOCAB_SIZE)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def weights() -> dict[str, np.ndarray]:
    """Hugging Face tensor names and layouts, float32 values that float16 holds exactly."""
    rng = np.random.default_rng(SEED)
    head_dim = HIDDEN // HEADS

    def normal(*shape: int) -> np.ndarray:
        drawn = rng.normal(0.0, 0.02, size=shape)
        return drawn.astype(np.float16).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(VOCAB_SIZE, HIDDEN)}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}."
        tensors |= {
            prefix + "input_layernorm.weight": np.ones(HIDDEN, dtype=np.float32),
            prefix + "self_attn.q_proj.weight": normal(HEADS * head_dim, HIDDEN),
            prefix + "self_attn.k_proj.weight": normal(KV_HEADS * head_dim, HIDDEN),
            prefix + "self_attn.v_proj.weight": normal(KV_HEADS * head_dim, HIDDEN),
            prefix + "self_attn.o_proj.weight": normal(HIDDEN, HEADS * head_dim),
            prefix + "post_attention_layernorm.weight": np.ones(HIDDEN, dtype=np.float32),
            prefix + "mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN),
            prefix + "mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN),
            prefix + "mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE),
        }
    tensors["model.norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    tensors["lm_head.weight"] = normal(VOCAB_SIZE, HIDDEN)
    return tensors


def _rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF stores rotary halves split; llama.cpp wants them interleaved (as convert_hf_to_gguf)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_gguf(out: Path) -> list[Path]:
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokens, merges = vocabulary(tokenizer)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(NAME)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # "gpt2" here fails to load
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in (UNK, BOS, EOS) else gguf.TokenType.NORMAL
            for i in range(VOCAB_SIZE)
        ]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_unk_token_id(UNK)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in weights().items():
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            gguf_name = f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"
        if name.endswith("q_proj.weight"):
            tensor = _rope_permute(tensor, HEADS)
        elif name.endswith("k_proj.weight"):
            tensor = _rope_permute(tensor, KV_HEADS)
        # Norms stay float32 (llama.cpp wants them so); matrices are float16, which is exact.
        writer.add_tensor(gguf_name, tensor if tensor.ndim == 1 else tensor.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [out]


def _json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_hf(out: Path) -> list[Path]:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    _json(
        out / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HIDDEN // HEADS,
            "max_position_embeddings": CONTEXT,
            "rms_norm_eps": RMS_EPS,
            "rope_theta": ROPE_THETA,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "torch_dtype": "float32",
        },
    )
    _json(
        out / "generation_config.json",
        {"bos_token_id": BOS, "eos_token_id": EOS, "do_sample": False},
    )
    _json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": SPECIALS[BOS],
            "eos_token": SPECIALS[EOS],
            "unk_token": SPECIALS[UNK],
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": CONTEXT,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _json(
        out / "special_tokens_map.json",
        {"bos_token": SPECIALS[BOS], "eos_token": SPECIALS[EOS], "unk_token": SPECIALS[UNK]},
    )
    save_file(weights(), str(out / "model.safetensors"), metadata={"format": "pt"})
    return sorted(p for p in out.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=["gguf", "hf"])
    parser.add_argument("out", type=Path, help="the .gguf file, or the checkpoint directory")
    args = parser.parse_args(argv)
    written = write_gguf(args.out) if args.format == "gguf" else write_hf(args.out)
    for path in written:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{digest}  {path.stat().st_size:>9}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
