"""s3: model files under a prefix of an S3 bucket, the site's staging bucket (AWS S3, MinIO or
any server of the S3 API), listed and read with boto3 (``s3_client.py``); the bytes go through
appliance's own downloader like every other artifact: into the blob store, hashed on the way,
resumable (ranged GETs continue a .part file), retried, cached by sha256, several at once.

Every object must match a digest known before its first byte is read, from one of:
- a pin in the spec (``models[].sha256``, per file): the strongest, reviewed with the spec;
- a ``sha256sums`` file under the prefix (sha256sum format). It lives in the same bucket as the
  weights, so whoever can replace a weight can rewrite it too: the spec must pin the file's own
  sha256, which makes each line it holds as strong as a pin in the spec;
- S3's full-object SHA-256 checksum (HeadObject with checksum mode): the bucket computed it at
  upload. It proves the bytes are those the bucket stored (against corruption on the way), not
  that the bucket holds what the publisher meant: like the hub's digests for hf://, it is the
  bucket's own word. A multipart upload's SHA-256 is a checksum of part checksums, not of the
  object, and is not used.
Where several are known they must agree, or the build stops before downloading. An object with
none is refused by name: pin it, or exclude it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from appliance.bundle.layout import unsafe_reason
from appliance.errors import BuildError, ChecksumMismatchError, FetchError
from appliance.fetchers.download import Fetcher, Wanted
from appliance.fetchers.hf import selected_by
from appliance.fetchers.http import RetryPolicy
from appliance.fetchers.local_models import ModelFile, ModelsFetched, models_part
from appliance.fetchers.s3_client import S3Client, make_client, object_opener, s3_errors
from appliance.fetchers.source import Job, Part, Request
from appliance.spec.s3_model import S3Model, Sha256Sums

_HEX = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
# A sha256sum file for a model's files is a few KiB; anything far larger is not one.
_SUMS_LIMIT = 4 << 20


@dataclass(frozen=True)
class S3Object:
    key: str
    relative: str  # the path under the prefix: the file's name inside the model
    size: int
    etag: str
    sha256: str  # what the bytes must hash to
    pinned: bool  # by the spec (a pin, or a line of the pinned sha256sums), not the bucket alone


def split_source(source: str) -> tuple[str, str]:
    """(bucket, prefix): the prefix is empty or ends in '/', so it names a folder, and
    ``s3://b/models/llama`` never takes in ``models/llama-2/``."""
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def plan_objects(model: S3Model, client: S3Client, jobs: int) -> list[S3Object]:
    """Every selected object under the prefix with the digest it must match; refuses a missing
    object, a missing digest and digests that disagree, before any weight is downloaded."""
    bucket, prefix = split_source(model.source)
    listed = _list(model, client, bucket, prefix)
    pinned_sums = model.sha256sums
    sums = _read_sums(model, pinned_sums, client, bucket, prefix, listed) if pinned_sums else {}
    sums_file = pinned_sums.file.strip("/") if pinned_sums else None
    chosen = {
        rel: entry
        for rel, entry in listed.items()
        if rel != sums_file and selected_by(rel, model.include, model.exclude)
    }
    for rel, origin in [
        *((r, "the spec pins it") for r in model.sha256),
        *_sums_origin(model, sums),
    ]:
        if rel not in listed and selected_by(rel, model.include, model.exclude):
            raise FetchError(
                f"model {model.name}: s3://{bucket}/{prefix}{rel} is missing: {origin}, but "
                "the bucket has no such object",
                hint="upload the object, or drop it from the pins (models[].sha256, the "
                "sha256sums file) if the model no longer has it",
            )
    if not chosen:
        raise BuildError(
            f"model {model.name}: s3://{bucket}/{prefix} holds no objects"
            + (" that include/exclude select" if listed else ""),
            hint="check models[].source (s3://BUCKET/PREFIX) and models[].include / exclude",
        )
    for rel in chosen:
        reason = unsafe_reason(rel)
        if reason is not None:
            raise FetchError(
                f"model {model.name}: the bucket holds an object '{rel}' ({reason})",
                hint="refusing the prefix: a model file may not name a path outside the model",
            )

    def resolve(rel: str) -> S3Object:
        entry = chosen[rel]
        key = f"{prefix}{rel}"
        known = [(f"pinned in the spec: {d}", d) for d in [model.sha256.get(rel)] if d]
        if rel in sums:
            known.append((f"{sums_file}: {sums[rel]}", sums[rel]))
        bucket_sha = _bucket_checksum(model, client, bucket, key, entry["ETag"])
        if bucket_sha is not None:
            known.append((f"the bucket's SHA-256 checksum: {bucket_sha}", bucket_sha))
        if not known:
            raise BuildError(
                f"model {model.name}: s3://{bucket}/{key} has no digest to check it against "
                "(no pin in the spec, no line in a pinned sha256sums file, no full-object "
                "SHA-256 checksum in the bucket)",
                hint=f"pin it (models[].sha256: {{{rel}: <sha256>}}), list it in a pinned "
                "sha256sums file, or exclude it (models[].exclude)",
            )
        if len({digest for _, digest in known}) > 1:
            raise ChecksumMismatchError(
                f"model {model.name}: s3://{bucket}/{key}: the digests disagree ("
                + "; ".join(label for label, _ in known)
                + ")",
                hint="the object in the bucket is not the one that was pinned: find out who "
                "changed it; if the change is intended, pin the new digest",
            )
        pinned = rel in model.sha256 or rel in sums
        return S3Object(key, rel, int(entry["Size"]), entry["ETag"], known[0][1], pinned)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="s3-head") as pool:
        return list(pool.map(resolve, sorted(chosen)))


def _sums_origin(model: S3Model, sums: dict[str, str]) -> list[tuple[str, str]]:
    name = model.sha256sums.file if model.sha256sums else ""
    return [(rel, f"{name} lists it") for rel in sums]


def _list(model: S3Model, client: S3Client, bucket: str, prefix: str) -> dict[str, Any]:
    """Object entries under ``prefix`` by their path below it; folder markers left out."""
    found: dict[str, Any] = {}
    with s3_errors(model.name, f"s3://{bucket}/{prefix}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                rel = entry["Key"][len(prefix) :]
                if rel and not rel.endswith("/"):
                    found[rel] = entry
    return found


def _read_sums(
    model: S3Model,
    pinned: Sha256Sums,
    client: S3Client,
    bucket: str,
    prefix: str,
    listed: dict[str, Any],
) -> dict[str, str]:
    """The pinned sha256sums file's lines, path under the prefix -> sha256."""
    name = pinned.file.strip("/")
    where = f"s3://{bucket}/{prefix}{name}"
    if name not in listed:
        raise FetchError(
            f"model {model.name}: {where} is missing: models[].sha256sums names it",
            hint="upload the sha256sums file beside the weights, or fix models[].sha256sums.file",
        )
    if int(listed[name]["Size"]) > _SUMS_LIMIT:
        raise BuildError(f"model {model.name}: {where} is larger than a sha256sums file can be")
    with s3_errors(model.name, where):
        data = client.get_object(Bucket=bucket, Key=f"{prefix}{name}")["Body"].read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != pinned.sha256:
        raise ChecksumMismatchError(
            f"model {model.name}: {where}: sha256 mismatch: the spec pins {pinned.sha256}, "
            f"the bucket holds {actual}",
            hint="the sha256sums file changed in the bucket: find out who changed it; if the "
            "change is intended, pin its new digest (models[].sha256sums.sha256)",
        )
    sums: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _SUMS_LINE.match(line)
        if match is None:
            raise BuildError(
                f"model {model.name}: {where} line {number} is not '<sha256>  <path>'",
                hint="write it as sha256sum does: (cd PREFIX && sha256sum FILES > SHA256SUMS)",
            )
        sums[match.group(2).removeprefix("./")] = match.group(1).lower()
    return sums


def _bucket_checksum(
    model: S3Model, client: S3Client, bucket: str, key: str, etag: str
) -> str | None:
    with s3_errors(model.name, f"s3://{bucket}/{key}"):
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return full_object_sha256(head, etag)


def full_object_sha256(head: dict[str, Any], etag: str) -> str | None:
    """The object's full-object SHA-256 from a HeadObject answer, hex; None when it has none."""
    value = head.get("ChecksumSHA256")
    kind = head.get("ChecksumType")
    # A multipart upload (ETag "...-N") has a composite checksum unless S3 says FULL_OBJECT.
    multipart = "-" in etag.strip('"') and kind != "FULL_OBJECT"
    if not value or "-" in value or kind == "COMPOSITE" or multipart:
        return None
    try:
        digest = base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None
    return digest if _HEX.match(digest) else None


def model_format(model: S3Model, files: list[ModelFile]) -> str | None:
    """The weights' format: as the spec says, else from the file names (GGUF first: a
    directory with both is served by a GGUF runtime only if it says so)."""
    if model.format is not None:
        return model.format
    names = [f.relative for f in files]
    for suffix, fmt in ((".gguf", "gguf"), (".safetensors", "safetensors")):
        if any(name.endswith(suffix) for name in names):
            return fmt
    return None


def fetch_s3_model(
    model: S3Model, fetcher: Fetcher, warn: Callable[[str], None] = lambda _m: None
) -> list[ModelFile]:
    """Download the model's selected objects into the fetcher's store, each checked; ``warn``
    hears which ones only the bucket vouches for."""
    client = make_client(fetcher.policy or RetryPolicy(), fetcher.jobs)
    objects = plan_objects(model, client, fetcher.jobs)
    bucket, _ = split_source(model.source)
    unpinned = [o.relative for o in objects if not o.pinned]
    if unpinned:
        warn(
            f"model {model.name}: {len(unpinned)} of {len(objects)} files are checked only "
            f"against the bucket's own SHA-256 checksums ({', '.join(unpinned[:3])}"
            f"{', ...' if len(unpinned) > 3 else ''}): they prove the transfer, not who wrote "
            "the objects. Pin them (models[].sha256, or a pinned sha256sums file) to tie the "
            "bundle to the reviewed weights"
        )
    wanted = [
        Wanted(
            f"model {model.name} {o.relative}",
            f"s3://{bucket}/{o.key}",
            o.sha256,
            o.size,
            opener=object_opener(client, model.name, bucket, o.key, o.etag),
        )
        for o in objects
    ]
    fetched = fetcher.fetch_all(wanted)
    return [
        ModelFile(o.relative, item.sha256, item.size)
        for o, item in zip(objects, fetched, strict=True)
    ]


class S3ModelsSource:
    """s3:// models: the objects under a prefix, each checked against a digest."""

    def check(self, request: Request) -> list[S3Model] | None:
        models = [m for m in request.spec.models if isinstance(m, S3Model)]
        if models and importlib.util.find_spec("boto3") is None:
            raise BuildError(
                f"model {models[0].name}: boto3 is not installed; it reads s3:// models",
                hint="install appliance with its build extra: pip install 'appliance[build]'",
            )
        return models or None

    def fetch(self, job: Job, plan: list[S3Model]) -> ModelsFetched:
        fetched: ModelsFetched = []
        for model in plan:
            files = fetch_s3_model(model, job.fetcher, job.warn)
            fetched.append((model, model_format(model, files), files))
        return fetched

    def describe(self, job: Job, fetched: ModelsFetched) -> Part:
        return models_part(fetched)
