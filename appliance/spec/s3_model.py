"""The spec of an s3:// model: a prefix of a bucket, and the digests its objects must match."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from appliance.spec.checks import err
from appliance.spec.common import ModelTask, Name, Sha256, StrictModel

# S3's bucket naming rules (3-63 characters: lowercase letters, digits, '.', '-').
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class Sha256Sums(StrictModel):
    """A ``sha256sum``-format file beside the weights, itself pinned: the file lives in the same
    bucket as the weights, so without its own digest in the spec it would prove no more than
    the bucket's word."""

    file: str = Field(default="SHA256SUMS", description="its path under the prefix")
    sha256: Sha256 = Field(description="the sha256 of the file itself")


class S3Model(StrictModel):
    """Model files under a prefix of an S3 bucket (the site's staging bucket: AWS S3, MinIO, any
    S3 API). Endpoint, region and credentials come from the build machine's environment or AWS
    profile, never from the spec. Every object is checked against a digest: a pin here
    (``sha256``, or a pinned ``sha256sums`` file), else the bucket's own full-object SHA-256
    checksum; an object with none is refused."""

    name: Name
    source: str = Field(description="s3://BUCKET/PREFIX")
    task: ModelTask = "chat"
    sha256: dict[str, Sha256] = Field(
        default_factory=dict, description="pinned sha256 per file, by its path under the prefix"
    )
    sha256sums: Sha256Sums | None = Field(
        default=None, description="a pinned sha256sum-format file under the prefix"
    )
    include: list[str] = Field(default_factory=list, description="glob patterns to fetch")
    exclude: list[str] = Field(default_factory=list, description="glob patterns to skip")
    format: Literal["gguf", "safetensors"] | None = Field(
        default=None, description="the weights' format; by default from the file names"
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        bucket, _, prefix = value.removeprefix("s3://").partition("/")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise err(
                "bad_s3_source",
                "expected s3://BUCKET/PREFIX with an S3 bucket name (3-63 characters: a-z, 0-9, "
                "'.', '-'), got '{value}'",
                value=value,
            )
        if "//" in prefix or any(part in {".", ".."} for part in prefix.split("/")):
            raise err(
                "bad_s3_source",
                "the prefix of '{value}' has an empty, '.' or '..' segment",
                value=value,
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _pins(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise err(
                    "bad_pin_path",
                    "'{path}' is not a path under the prefix (relative, no '..')",
                    path=path,
                )
        return value
