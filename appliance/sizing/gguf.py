"""The tensor list and metadata of a GGUF file (llama.cpp's format, and what Ollama's model
blobs are), from its header alone.

Layout (ggml's docs/gguf.md, version 2 and 3): magic ``GGUF``, version (u32), tensor count (u64),
metadata count (u64), the metadata (key string, value type u32, value), then one info per tensor
(name, dimension count u32, dimensions u64 each, ggml type u32, data offset u64), all little
endian, strings as a u64 length and UTF-8 bytes. A tensor's size follows from its ggml type: a
block of ``block_size`` elements takes ``type_size`` bytes (Q4_K: 256 elements in 144 bytes).

Every count and length is bounded before anything is allocated, and the header may not run past
the file's end nor past ``MAX_HEADER_BYTES``: a hostile file gets a clear error, not a huge read.
Large arrays (the tokenizer's vocabulary) are skipped over, keeping only their length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import SizingError

MAGIC = b"GGUF"
# Large vocabularies with merges and scores stay well below this (Gemma 3's 262k tokens take
# about 10 MB); a header that claims more is refused rather than read.
MAX_HEADER_BYTES = 256 << 20
MAX_TENSORS = 1 << 20
MAX_KEYS = 1 << 16
MAX_DIMS = 4  # GGML_MAX_DIMS
# Arrays up to this many elements keep their values (per-layer head counts); longer ones only
# their length.
KEEP_ARRAY = 4096
KEEP_STRING = 4096

# ggml_type -> (name, elements per block, bytes per block), from ggml's type_traits
# (ggml/src/ggml.c) at the types GGUF files carry today; ids 4, 5 and 31-33, 36-38 are retired.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),  # as gguf-py counts it; no published file stores Q8_1
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# Metadata value types: struct format of the scalar ones.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    # Keys whose value was an array too long to keep: its length.
    array_lengths: dict[str, int]
    tensors: tuple[GgufTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Reader:
    def __init__(self, path: Path, stream: BinaryIO, limit: int) -> None:
        self.path, self.stream, self.limit, self.used = path, stream, limit, 0

    def take(self, count: int) -> bytes:
        if self.used + count > self.limit:
            raise _bad(self.path, f"its header runs past {self.limit} bytes (or the file's end)")
        data = self.stream.read(count)
        if len(data) != count:
            raise _bad(self.path, "it ends inside its header")
        self.used += count
        return data

    def skip(self, count: int) -> None:
        if self.used + count > self.limit:
            raise _bad(self.path, f"its header runs past {self.limit} bytes (or the file's end)")
        self.stream.seek(count, 1)
        self.used += count

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, keep: int = KEEP_STRING) -> str:
        length = self.scalar("<Q")
        if length > keep:
            self.skip(length)
            return f"<{length} bytes>"
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad(self.path, "a string in its header is not UTF-8") from exc


def read_gguf(path: Path, max_header_bytes: int = MAX_HEADER_BYTES) -> GgufHeader:
    """The metadata and tensors of the GGUF file ``path``; tensor data is never read."""
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            reader = _Reader(path, stream, min(size, max_header_bytes))
            return _parse(reader, size)
    except OSError as exc:
        raise SizingError(
            f"cannot read {path}: {exc.strerror}", hint="check the model path and its permissions"
        ) from exc


def _parse(reader: _Reader, size: int) -> GgufHeader:
    path = reader.path
    if reader.take(4) != MAGIC:
        raise _bad(path, "it does not start with the GGUF magic")
    version = reader.scalar("<I")
    if version not in (2, 3):
        raise _bad(path, f"it is GGUF version {version}; versions 2 and 3 are read")
    tensor_count, key_count = reader.scalar("<Q"), reader.scalar("<Q")
    if tensor_count > MAX_TENSORS or key_count > MAX_KEYS:
        raise _bad(path, f"it claims {tensor_count} tensors and {key_count} metadata keys")
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(key_count):
        key = reader.string(keep=1 << 16)
        kind = reader.scalar("<I")
        if kind == _ARRAY:
            item_kind, count = reader.scalar("<I"), reader.scalar("<Q")
            values = _array(reader, item_kind, count)
            if values is None:
                lengths[key] = count
            else:
                metadata[key] = values
        else:
            metadata[key] = _value(reader, kind)
    infos = []
    for _ in range(tensor_count):
        name = reader.string(keep=1 << 16)
        dims = reader.scalar("<I")
        if dims > MAX_DIMS:
            raise _bad(path, f"tensor {name!r} has {dims} dimensions; ggml allows {MAX_DIMS}")
        shape = tuple(reader.scalar("<Q") for _ in range(dims))
        kind, offset = reader.scalar("<I"), reader.scalar("<Q")
        if kind not in GGML_TYPES:
            raise _bad(path, f"tensor {name!r} has unknown ggml type {kind}")
        type_name, block, type_size = GGML_TYPES[kind]
        elements = prod(shape)
        if elements % block:
            raise _bad(path, f"tensor {name!r} ({type_name}) is not whole blocks of {block}")
        infos.append((GgufTensor(name, type_name, shape, elements // block * type_size), offset))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        raise _bad(path, f"its general.alignment {alignment!r} is not a positive integer")
    data_start = -(-reader.used // alignment) * alignment
    for tensor, offset in infos:
        if data_start + offset + tensor.nbytes > size:
            raise _bad(path, f"tensor {tensor.name!r} lies past the file's end")
    return GgufHeader(path, version, metadata, lengths, tuple(t for t, _ in infos))


def _value(reader: _Reader, kind: int) -> Any:
    if kind in _SCALARS:
        return reader.scalar(_SCALARS[kind])
    if kind == _STRING:
        return reader.string()
    raise _bad(reader.path, f"a metadata value has unknown type {kind}")


def _array(reader: _Reader, kind: int, count: int) -> list[Any] | None:
    """The array's values when short; else skip it (strings one by one) and return None."""
    if count > reader.limit:
        raise _bad(reader.path, f"an array claims {count} elements")
    if kind in _SCALARS:
        width = struct.calcsize(_SCALARS[kind])
        if count > KEEP_ARRAY:
            reader.skip(width * count)
            return None
        return [reader.scalar(_SCALARS[kind]) for _ in range(count)]
    if kind == _STRING:
        for _ in range(count):
            reader.skip(reader.scalar("<Q"))
        return None
    if kind == _ARRAY:
        # Nested arrays appear in no model's metadata; skip them element by element.
        for _ in range(count):
            _array(reader, reader.scalar("<I"), reader.scalar("<Q"))
        return None
    raise _bad(reader.path, f"an array has unknown element type {kind}")


def _bad(path: Path, what: str) -> SizingError:
    return SizingError(
        f"{path} is not a usable GGUF file: {what}",
        hint="replace the file with the model's original; sizing reads only its header",
    )
