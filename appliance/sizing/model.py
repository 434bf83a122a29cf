"""A model's facts for sizing, from its files: what its weights take on the GPU, and its
architecture.

A model is a set of named files: a Hugging Face checkpoint directory (``config.json`` and
``*.safetensors``), one GGUF file, an Ollama layout (``manifests/...`` naming a GGUF blob under
``blobs/``), or the same files inside a bundle (each a blob, named by its path in the model).
Only headers and ``config.json`` are read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import SizingError
from appliance.sizing.architecture import Architecture, from_config, from_gguf_metadata
from appliance.sizing.gguf import read_gguf
from appliance.sizing.safetensors import FLOAT_DTYPES, read_header

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
CONFIG_BYTES = 4 << 20  # a config.json is a few KiB; refuse to parse anything huge


@dataclass(frozen=True)
class ModelFacts:
    name: str
    format: str  # safetensors or gguf
    architecture: Architecture
    file_bytes: int  # the tensors as stored
    weight_bytes: int  # the tensors as loaded onto GPUs (all of them, before tensor parallelism)
    tensors: int
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (lists, not tuples): what the installer passes to the play."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFacts:
        values = dict(data)
        values["architecture"] = Architecture.from_dict(values["architecture"])
        return cls(**values)


def model_files(path: Path) -> dict[str, Path]:
    """A model on disk as its named files: a directory's files by relative path, or one file."""
    if path.is_file():
        return {path.name: path}
    if not path.is_dir():
        raise SizingError(
            f"model {path} does not exist",
            hint="pass a checkpoint directory, a .gguf file or an Ollama models directory",
        )
    return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}


def model_facts(name: str, files: Mapping[str, Path]) -> ModelFacts:
    """The facts of the model made of ``files`` (name inside the model -> file on disk)."""
    ggufs = sorted(n for n in files if n.endswith(".gguf"))
    if ggufs:
        if len(ggufs) > 1:
            raise SizingError(
                f"model {name} has {len(ggufs)} GGUF files ({', '.join(ggufs)})",
                hint="size each GGUF file on its own (split GGUF parts are not read)",
            )
        return _gguf_facts(name, files[ggufs[0]])
    manifests = sorted(n for n in files if n.startswith("manifests/"))
    if manifests:
        return _gguf_facts(name, _ollama_weights(name, files, manifests))
    if "config.json" in files:
        return _safetensors_facts(name, files)
    raise SizingError(
        f"model {name} has neither config.json, a .gguf file nor an Ollama manifest",
        hint="sizing reads Hugging Face checkpoints, GGUF files and Ollama models",
    )


def _safetensors_facts(name: str, files: Mapping[str, Path]) -> ModelFacts:
    config = _read_json(files["config.json"])
    architecture = from_config(config, f"model {name}: config.json")
    shards = _weight_files(name, files)
    tensors = [t for shard in shards for t in read_header(files[shard]).tensors]
    tensors = [t for t in tensors if not _speculative(t.name, config)]
    # vLLM serves a float32 checkpoint in 16 bits (dtype auto); every other stored dtype
    # (bf16/fp16 weights, int32-packed AWQ/GPTQ, fp8, bitsandbytes' uint8) is loaded as stored.
    halved = architecture.dtype == "float32" and not architecture.quantization
    by_dtype: dict[str, int] = {}
    loaded = 0
    for tensor in tensors:
        by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + tensor.nbytes
        if halved and tensor.dtype in FLOAT_DTYPES:
            loaded += tensor.elements * 2
        else:
            loaded += tensor.nbytes
    return ModelFacts(
        name=name,
        format="safetensors",
        architecture=architecture,
        file_bytes=sum(t.nbytes for t in tensors),
        weight_bytes=loaded,
        tensors=len(tensors),
        bytes_by_dtype=dict(sorted(by_dtype.items())),
    )


def _speculative(tensor: str, config: dict[str, Any]) -> bool:
    """DeepSeek's multi-token-prediction layers follow the decoder layers in the checkpoint;
    vLLM loads them only for speculative decoding (deepseek_v2.py, load_weights skips them)."""
    extra = config.get("num_nextn_predict_layers")
    if not isinstance(extra, int) or extra <= 0 or not tensor.startswith("model.layers."):
        return False
    index = tensor.split(".")[2]
    return index.isdigit() and int(index) >= int(config.get("num_hidden_layers", 0))


def _weight_files(name: str, files: Mapping[str, Path]) -> list[str]:
    """The shards vLLM loads: those the index names, else every top-level *.safetensors (the
    Hugging Face ones in preference to Mistral's consolidated copy)."""
    index = files.get("model.safetensors.index.json")
    if index is not None:
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SizingError(
                f"model {name}: model.safetensors.index.json has no weight_map",
                hint="use the checkpoint's original index file",
            )
        shards = sorted({str(shard) for shard in weight_map.values()})
        missing = [s for s in shards if s not in files]
        if missing:
            raise SizingError(
                f"model {name}: the index names {', '.join(missing)}, which the model lacks",
                hint="include every shard the index names",
            )
        return shards
    shards = sorted(n for n in files if n.endswith(".safetensors") and "/" not in n)
    hf = [s for s in shards if not s.startswith("consolidated")]
    if not shards:
        raise SizingError(
            f"model {name} has config.json but no .safetensors weights",
            hint="sizing reads safetensors headers; pickled .bin weights are not opened",
        )
    return hf or shards


def _ollama_weights(name: str, files: Mapping[str, Path], manifests: list[str]) -> Path:
    if len(manifests) > 1:
        raise SizingError(
            f"model {name} holds {len(manifests)} Ollama manifests",
            hint="size one Ollama model at a time",
        )
    manifest = _read_json(files[manifests[0]])
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    digests = [
        layer.get("digest")
        for layer in (layers if isinstance(layers, list) else [])
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER
    ]
    if len(digests) != 1 or not isinstance(digests[0], str):
        raise SizingError(
            f"model {name}: its Ollama manifest names {len(digests)} model layers, not one",
            hint="use the manifest Ollama itself wrote",
        )
    blob = "blobs/" + digests[0].replace(":", "-", 1)
    if blob not in files:
        raise SizingError(
            f"model {name}: its manifest names {blob}, which the model lacks",
            hint="include the model's blobs with its manifest",
        )
    return files[blob]


def _gguf_facts(name: str, path: Path) -> ModelFacts:
    header = read_gguf(path)
    architecture = from_gguf_metadata(header.metadata, header.array_lengths, f"model {name}")
    by_type: dict[str, int] = {}
    for tensor in header.tensors:
        by_type[tensor.ggml_type] = by_type.get(tensor.ggml_type, 0) + tensor.nbytes
    return ModelFacts(
        name=name,
        format="gguf",
        architecture=architecture,
        file_bytes=header.nbytes,
        weight_bytes=header.nbytes,
        tensors=len(header.tensors),
        bytes_by_dtype=dict(sorted(by_type.items())),
    )


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > CONFIG_BYTES:
            raise SizingError(
                f"{path} has {path.stat().st_size} bytes; a config or manifest has a few KiB",
                hint="point sizing at the model's own config.json",
            )
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SizingError(f"cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SizingError(
            f"{path} is not JSON ({exc})", hint="use the model's original file"
        ) from exc
