"""examples/tiny_model.py: the same bytes on every run, and files the runtimes can read."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "examples" / "tiny_model.py"


def generate(kind: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), kind, str(out)], capture_output=True, text=True, check=True
    )


def digests(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_two_runs_write_identical_bytes(kind: str, tmp_path: Path) -> None:
    # Separate processes: hash seeds and the tokenizer trainer's threads differ between them.
    first, second = tmp_path / f"a.{kind}", tmp_path / f"b.{kind}"
    generate(kind, first)
    generate(kind, second)
    assert digests(first)
    assert list(digests(first).values()) == list(digests(second).values())


def test_the_generator_prints_each_file_with_its_sha256(tmp_path: Path) -> None:
    printed = generate("hf", tmp_path / "hf").stdout.splitlines()
    names = sorted(line.split()[-1].rsplit("/", 1)[-1] for line in printed)
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for line in printed:
        digest, size, path = line.split()
        assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert int(size) == Path(path).stat().st_size


def test_gguf_is_a_small_llama_with_a_gpt2_style_tokenizer(tmp_path: Path) -> None:
    import gguf

    out = tmp_path / "tiny.gguf"
    generate("gguf", out)
    assert out.stat().st_size < 5 * 1024 * 1024
    reader = gguf.GGUFReader(out)

    def field(name: str) -> object:
        return reader.fields[name].contents()

    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2"  # llama.cpp refuses "gpt2" here
    tokens = field("tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    assert 256 < len(tokens) < 1000
    assert "tokenizer.chat_template" in reader.fields


def test_both_formats_carry_the_same_weights(tmp_path: Path) -> None:
    import gguf
    from safetensors.numpy import load_file

    generate("gguf", tmp_path / "tiny.gguf")
    generate("hf", tmp_path / "hf")
    hf = load_file(tmp_path / "hf" / "model.safetensors")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "tiny.gguf").tensors}
    assert len(tensors) == len(hf) == 3 + 9 * config["num_hidden_layers"]
    embedding = np.asarray(tensors["token_embd.weight"].data, dtype=np.float32)
    np.testing.assert_array_equal(embedding, hf["model.embed_tokens.weight"])
    down = np.asarray(tensors["blk.1.ffn_down.weight"].data, dtype=np.float32)
    np.testing.assert_array_equal(down, hf["model.layers.1.mlp.down_proj.weight"])
