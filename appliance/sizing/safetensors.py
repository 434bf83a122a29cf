"""The tensor list of a safetensors file, from its header alone.

The format: 8 bytes, a little-endian unsigned length N; N bytes of JSON naming each tensor's
dtype, shape and byte range in the data that follows. Only those 8 + N bytes are read, however
large the file. The header is checked as strictly as the safetensors library checks it: a bounded
length, a JSON object, known dtypes, byte ranges that match the shapes and lie inside the file.
Quantised checkpoints (AWQ/GPTQ packed int32 weights with their scales and zeros, FP8 weights
with their scales, bitsandbytes' packed uint8 with absmax and quant state) need no special case:
every tensor they store is in the list, with its own dtype, so the sum is what the GPU holds.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from appliance.errors import SizingError

# The safetensors library refuses larger headers (safetensors/src/tensor.rs, MAX_HEADER_SIZE =
# 100_000_000); a checkpoint that exceeds it would not load in vLLM either.
MAX_HEADER_BYTES = 100_000_000

# Bits per element of every dtype the safetensors format defines (safetensors/src/tensor.rs,
# enum Dtype, 0.6): the sub-byte float formats are stored packed.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def elements(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: tuple[Tensor, ...]
    metadata: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def read_header(path: Path, max_header_bytes: int = MAX_HEADER_BYTES) -> Header:
    """The tensors ``path`` holds, from its header; the weights are never read."""
    try:
        with path.open("rb") as stream:
            size = path.stat().st_size
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"it has {size} bytes, too few for a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > max_header_bytes:
                raise _bad(
                    path,
                    f"it declares a {length}-byte header; safetensors headers are at most "
                    f"{max_header_bytes} bytes",
                )
            if 8 + length > size:
                raise _bad(path, f"it declares a {length}-byte header but has {size} bytes")
            raw = stream.read(length)
    except OSError as exc:
        raise SizingError(
            f"cannot read {path}: {exc.strerror}", hint="check the model path and its permissions"
        ) from exc
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"its header is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise _bad(path, "its header is not a JSON object")
    return _parse(path, document, size - 8 - length)


def _parse(path: Path, document: dict[str, Any], data_bytes: int) -> Header:
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(path, "its __metadata__ is not a map of strings")
    tensors = []
    for name, entry in document.items():
        if not isinstance(entry, dict):
            raise _bad(path, f"tensor {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _bad(path, f"tensor {name!r} has a shape that is not a list of sizes")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise _bad(path, f"tensor {name!r} has data_offsets outside the file's data")
        nbytes = offsets[1] - offsets[0]
        expected = (prod(shape) * DTYPE_BITS[dtype] + 7) // 8
        if nbytes != expected:
            raise _bad(
                path,
                f"tensor {name!r} ({dtype} {shape}) needs {expected} bytes but its data_offsets "
                f"span {nbytes}",
            )
        tensors.append(Tensor(name, dtype, tuple(shape), nbytes))
    return Header(path, tuple(tensors), dict(metadata))


def _bad(path: Path, what: str) -> SizingError:
    return SizingError(
        f"{path} is not a usable safetensors file: {what}",
        hint="replace the file with the checkpoint's original; sizing reads only its header",
    )
