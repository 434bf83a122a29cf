"""The safetensors and GGUF header readers: real files from the formats' own writers, and
hostile headers refused with a clear error before anything large is read."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import SizingError
from appliance.sizing.gguf import GGML_TYPES, read_gguf
from appliance.sizing.model import model_facts, model_files
from appliance.sizing.safetensors import read_header
from tests.fixtures.hosts import ROOT
from tests.fixtures.model_files import write_gguf, write_safetensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/tiny_model.py's model in both formats, written by safetensors and gguf."""
    root = tmp_path_factory.mktemp("tiny")
    for kind, target in (("hf", root / "hf"), ("gguf", root / "tiny.gguf")):
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "tiny_model.py"), kind, str(target)],
            check=True,
            capture_output=True,
        )
    return root


def test_a_real_safetensors_file_is_read_from_its_header(tiny: Path) -> None:
    path = tiny / "hf" / "model.safetensors"
    header = read_header(path)
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    # Every byte after the header belongs to exactly one tensor.
    assert header.nbytes == path.stat().st_size - 8 - length
    assert {t.dtype for t in header.tensors} == {"F32"}
    embed = next(t for t in header.tensors if t.name == "model.embed_tokens.weight")
    assert embed.shape == (384, 256)


def test_a_float32_checkpoint_is_sized_at_the_16_bits_vllm_serves_it_in(tiny: Path) -> None:
    facts = model_facts("tiny", model_files(tiny / "hf"))
    assert facts.architecture.dtype == "float32"
    assert facts.weight_bytes * 2 == facts.file_bytes


def test_a_real_gguf_file_is_read_from_its_header(tiny: Path) -> None:
    path = tiny / "tiny.gguf"
    header = read_gguf(path)
    assert header.metadata["general.architecture"] == "llama"
    assert header.array_lengths["tokenizer.ggml.tokens"] == 384
    assert header.nbytes <= path.stat().st_size
    # Tensor data fills the file from the aligned end of the header (each tensor padded to 32).
    assert path.stat().st_size - header.nbytes < 64 << 10
    facts = model_facts("tiny", model_files(path))
    assert facts.architecture.kv_bytes_per_token(2) == 2 * 2 * (64 + 64) * 2


def test_the_ggml_block_sizes_are_ggmls_own() -> None:
    import gguf

    for kind, (name, block, size) in GGML_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)] == (block, size), name


def test_a_quantised_gguf_counts_whole_blocks(tmp_path: Path) -> None:
    import gguf

    q4k, q6k, f32 = (
        gguf.GGMLQuantizationType.Q4_K,
        gguf.GGMLQuantizationType.Q6_K,
        gguf.GGMLQuantizationType.F32,
    )
    path = tmp_path / "m.gguf"
    metadata = {
        "general.architecture": "llama",
        "llama.block_count": 1,
        "llama.embedding_length": 4096,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "llama.context_length": 8192,
        "llama.vocab_size": 32000,
    }
    write_gguf(
        path,
        metadata,
        [
            ("token_embd.weight", q4k, (32000, 4096)),
            ("blk.0.ffn_down.weight", q6k, (4096, 14336)),
            ("blk.0.attn_norm.weight", f32, (4096,)),
        ],
    )
    header = read_gguf(path)
    # Q4_K: 144 bytes per 256 values; Q6_K: 210 per 256; F32: 4 each.
    assert header.nbytes == 32000 * 4096 // 256 * 144 + 4096 * 14336 // 256 * 210 + 4096 * 4
    assert [t.ggml_type for t in header.tensors] == ["Q4_K", "Q6_K", "F32"]


def _safetensors(path: Path, header: bytes, data: int = 0) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * data)
    return path


@pytest.mark.parametrize(
    ("raw", "data", "message"),
    [
        (None, 0, "declares a 18446744073709551615-byte header; safetensors headers are at most"),
        (b"[1, 2]", 0, "its header is not a JSON object"),
        (b"{not json", 0, "its header is not JSON"),
        (
            json.dumps({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}).encode(),
            4,
            "tensor 'w' has unknown dtype 'F99'",
        ),
        (
            json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(),
            8,
            "tensor 'w' has data_offsets outside the file's data",
        ),
        (
            json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode(),
            8,
            "tensor 'w' (F32 [4]) needs 16 bytes but its data_offsets span 8",
        ),
        (
            json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}).encode(),
            0,
            "tensor 'w' has a shape that is not a list of sizes",
        ),
    ],
    ids=[
        "huge-length",
        "not-an-object",
        "not-json",
        "bad-dtype",
        "past-the-end",
        "wrong-size",
        "bad-shape",
    ],
)
def test_a_hostile_safetensors_header_is_refused(
    tmp_path: Path, raw: bytes | None, data: int, message: str
) -> None:
    path = tmp_path / "m.safetensors"
    if raw is None:
        path.write_bytes(struct.pack("<Q", 2**64 - 1) + b"{}")
    else:
        _safetensors(path, raw, data)
    with pytest.raises(SizingError) as caught:
        read_header(path)
    assert caught.value.message.startswith(f"{path} is not a usable safetensors file: ")
    assert message in caught.value.message


def test_a_header_longer_than_the_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 20) + b"{}")
    with pytest.raises(SizingError, match="declares a 1048576-byte header but has 10 bytes"):
        read_header(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"GGML" + b"\0" * 20, "it does not start with the GGUF magic"),
        (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "it is GGUF version 1"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0), "it claims 1099511627776 tensors"),
        (
            # One key whose string claims 2**62 bytes.
            b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62),
            "its header runs past",
        ),
        (
            # A key with an array of 2**60 uint8 values.
            b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
            + struct.pack("<IIQ", 9, 0, 2**60),
            "an array claims 1152921504606846976 elements",
        ),
    ],
    ids=["bad-magic", "old-version", "too-many-tensors", "huge-string", "huge-array"],
)  # fmt: skip
def test_a_hostile_gguf_header_is_refused(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(raw)
    with pytest.raises(SizingError) as caught:
        read_gguf(path)
    assert caught.value.message.startswith(f"{path} is not a usable GGUF file: ")
    assert message in caught.value.message


def test_a_sparse_checkpoint_reads_only_its_header(tmp_path: Path) -> None:
    # 70 GB of tensors declared; the file is a hole, and reading it costs its header only.
    path = tmp_path / "big.safetensors"
    write_safetensors(path, [("w", "BF16", (35_000_000_000,))])
    assert read_header(path).nbytes == 70_000_000_000
    assert path.stat().st_blocks * 512 < 1 << 20


def test_an_ollama_layout_is_sized_from_the_blob_its_manifest_names(
    tiny: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ollama"
    digest = "ab" * 32
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes((tiny / "tiny.gguf").read_bytes())
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": f"sha256:{digest}",
                    },
                    {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"},
                ]
            }
        )
    )
    facts = model_facts("tiny", model_files(root))
    assert facts.format == "gguf"
    assert facts.weight_bytes == read_gguf(tiny / "tiny.gguf").nbytes
