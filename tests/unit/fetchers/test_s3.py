"""The s3:// kind's pure parts: where a prefix ends, which bucket checksums are digests of the
whole object, and the format a model's file names imply."""

from __future__ import annotations

import base64
import hashlib

import pytest

from appliance.fetchers.local_models import ModelFile
from appliance.fetchers.s3 import full_object_sha256, model_format, split_source
from appliance.spec.s3_model import S3Model

DATA = b"weights"
HEX = hashlib.sha256(DATA).hexdigest()
B64 = base64.b64encode(hashlib.sha256(DATA).digest()).decode()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("s3://staging/models/llama", ("staging", "models/llama/")),
        ("s3://staging/models/llama/", ("staging", "models/llama/")),
        ("s3://staging", ("staging", "")),
        ("s3://staging/", ("staging", "")),
    ],
)
def test_a_prefix_names_a_folder(source: str, expected: tuple[str, str]) -> None:
    assert split_source(source) == expected


@pytest.mark.parametrize(
    ("head", "etag", "expected"),
    [
        ({"ChecksumSHA256": B64}, '"abc"', HEX),
        ({"ChecksumSHA256": B64, "ChecksumType": "FULL_OBJECT"}, '"abc-3"', HEX),
        # Multipart: a checksum of the parts' checksums, not of the object.
        ({"ChecksumSHA256": B64}, '"abc-3"', None),
        ({"ChecksumSHA256": f"{B64}-3"}, '"abc"', None),
        ({"ChecksumSHA256": B64, "ChecksumType": "COMPOSITE"}, '"abc"', None),
        ({"ChecksumCRC32": "lEifbw=="}, '"abc"', None),
        ({"ChecksumSHA256": "not base64!"}, '"abc"', None),
        ({"ChecksumSHA256": base64.b64encode(b"short").decode()}, '"abc"', None),
    ],
)
def test_only_a_full_object_sha256_counts(head: dict[str, str], etag: str, expected: str) -> None:
    assert full_object_sha256(head, etag) == expected


@pytest.mark.parametrize(
    ("names", "declared", "expected"),
    [
        (["config.json", "model-00001-of-00002.safetensors"], None, "safetensors"),
        (["model.Q4_K_M.gguf", "README.md"], None, "gguf"),
        (["pytorch_model.bin", "config.json"], None, None),
        (["model.safetensors"], "gguf", "gguf"),
    ],
)
def test_the_format_is_declared_or_read_from_the_names(
    names: list[str], declared: str | None, expected: str | None
) -> None:
    model = S3Model.model_validate({"name": "m", "source": "s3://staging/m", "format": declared})
    files = [ModelFile(name, "0" * 64, 1) for name in names]
    assert model_format(model, files) == expected
