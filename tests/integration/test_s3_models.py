"""s3:// models against a real S3 server on loopback (moto's, tests/fixtures/s3.py, the
stand-in for the site's staging bucket): every object checked against a digest known before its
first byte, resumable, parallel, into the blob store; and the build machine's credentials and
endpoint in no file of the bundle and in nothing the build prints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.build import registry
from appliance.bundle import layout
from appliance.bundle.signing import keygen
from appliance.bundle.store import BlobStore
from appliance.bundle.verify import verify_dir
from appliance.errors import BuildError, ChecksumMismatchError, FetchError
from appliance.fetchers.download import Fetcher
from appliance.fetchers.http import RetryPolicy
from appliance.fetchers.s3 import fetch_s3_model
from appliance.progress import NullProgress
from appliance.spec.s3_model import S3Model
from tests.fixtures.cli import run_cli
from tests.fixtures.s3 import AWS_VARIABLES, S3Stub, s3_server
from tests.fixtures.specs import spec_text

BUCKET = "staging"
PREFIX = "models/tiny-llama"
SOURCE = f"s3://{BUCKET}/{PREFIX}"
FAST = RetryPolicy(attempts=3, backoff=0.01, timeout=10)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_files() -> dict[str, bytes]:
    # Random per test: nothing comes from a cache another test filled.
    import os

    return {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}).encode(),
        "tokenizer.json": json.dumps({"model": {"type": "BPE"}}).encode() + os.urandom(64),
        "model.safetensors": os.urandom(3 << 20),
    }


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Stub]:
    with s3_server() as stub:
        for name in AWS_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in stub.env(tmp_path).items():
            monkeypatch.setenv(name, value)
        stub.client().create_bucket(Bucket=BUCKET)
        yield stub


def put(s3: S3Stub, rel: str, data: bytes, checksum: bool = True) -> None:
    """Upload as `aws s3 cp --checksum-algorithm SHA256` does (checksum), or with the SDK's
    default CRC32 only."""
    extra = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
    s3.client().put_object(Bucket=BUCKET, Key=f"{PREFIX}/{rel}", Body=data, **extra)


def sums_file(files: dict[str, bytes]) -> bytes:
    return "".join(f"{sha(data)}  {rel}\n" for rel, data in sorted(files.items())).encode()


def model(**fields: Any) -> S3Model:
    return S3Model.model_validate({"name": "tiny-s3", "source": SOURCE, **fields})


def fetcher(root: Path, jobs: int = 3) -> Fetcher:
    return Fetcher(BlobStore(root / "store"), None, NullProgress(), jobs=jobs, policy=FAST)


def blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "store" / layout.BLOBS).iterdir()}


# --- a bundle from an s3:// source ----------------------------------------------------------


def test_bundle_lists_every_object_with_its_sha256_and_no_secret_anywhere(
    s3: S3Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = model_files()
    # One digest from each place: the bucket's checksum, a pin in the spec, the pinned
    # SHA256SUMS beside the weights.
    put(s3, "model.safetensors", files["model.safetensors"])
    put(s3, "config.json", files["config.json"], checksum=False)
    put(s3, "tokenizer.json", files["tokenizer.json"], checksum=False)
    sums = sums_file({"tokenizer.json": files["tokenizer.json"]})
    put(s3, "SHA256SUMS", sums, checksum=False)
    put(s3, "notes/README.md", b"not part of the model\n", checksum=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        spec_text(
            "s3-models",
            stack={"orchestrator": "systemd", "registry": "none"},
            models=[
                {
                    "name": "tiny-s3",
                    "source": SOURCE,
                    "sha256": {"config.json": sha(files["config.json"])},
                    "sha256sums": {"file": "SHA256SUMS", "sha256": sha(sums)},
                    "exclude": ["notes/"],
                }
            ],
        )
    )
    keygen(tmp_path / "key", "s3 test")
    # The whole CLI as a user runs it, with the kinds that need PyPI or Debian left out.
    kinds = ("packages", "models-s3", "ansible-content")
    monkeypatch.setattr(registry, "SOURCES", {k: registry.SOURCES[k] for k in kinds})
    code, out, err = run_cli(
        capsys,
        "--debug",
        "-v",
        "build-bundle",
        str(spec),
        "-o",
        str(tmp_path / "bundle"),
        "--sign-key",
        str(tmp_path / "key"),
        "--cache",
        str(tmp_path / "cache"),
    )
    assert code == 0, err
    bundle = tmp_path / "bundle"
    manifest = json.loads((bundle / layout.MANIFEST).read_bytes())
    listed = {f["name"]: f for f in manifest["files"] if f["component"] == "tiny-s3"}
    assert {name: (e["sha256"], e["size"], e["kind"]) for name, e in listed.items()} == {
        name: (sha(data), len(data), "model") for name, data in files.items()
    }
    for entry in listed.values():
        assert sha((bundle / entry["path"]).read_bytes()) == entry["sha256"]
    (component,) = [c for c in manifest["components"] if c["name"] == "tiny-s3"]
    assert (component["kind"], component["source"], component["version"]) == (
        "model",
        SOURCE,
        "safetensors",
    )
    verify_dir(bundle, tmp_path / "key.pub")
    # Each weight was read once, the three in one build; the sums file too, nothing excluded.
    assert sorted(p for m, p, _ in s3.relay.requests if m == "GET" and "/models/" in p) == [
        f"/{BUCKET}/{PREFIX}/{name}"
        for name in ("SHA256SUMS", "config.json", "model.safetensors", "tokenizer.json")
    ]

    secrets = [s3.access_key, s3.secret_key, s3.endpoint, f"127.0.0.1:{s3.relay.port}"]
    secrets += [s3.direct.removeprefix("http://")]
    for path in bundle.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in secrets if s.encode() in data], path
    assert not [s for s in secrets if s in out + err]
    assert "s3://staging/models/tiny-llama" in (bundle / "sbom.cdx.json").read_text()


def test_a_rebuild_takes_every_object_from_the_cache(s3: S3Stub, tmp_path: Path) -> None:
    files = model_files()
    for rel, data in files.items():
        put(s3, rel, data)
    cache = BlobStore(tmp_path / "cache")
    first = Fetcher(BlobStore(tmp_path / "b1"), cache, NullProgress(), jobs=3, policy=FAST)
    warnings: list[str] = []
    fetch_s3_model(model(sha256={"config.json": sha(files["config.json"])}), first, warnings.append)
    # What only the bucket vouches for is said in the build's warnings.
    assert warnings == [
        "model tiny-s3: 2 of 3 files are checked only against the bucket's own SHA-256 "
        "checksums (model.safetensors, tokenizer.json): they prove the transfer, not who wrote "
        "the objects. Pin them (models[].sha256, or a pinned sha256sums file) to tie the bundle "
        "to the reviewed weights"
    ]
    second = Fetcher(BlobStore(tmp_path / "b2"), cache, NullProgress(), jobs=3, policy=FAST)
    got = fetch_s3_model(model(), second)
    assert (second.fetched.count, second.cached.count) == (0, 3)
    assert {f.relative: f.sha256 for f in got} == {rel: sha(d) for rel, d in files.items()}
    assert len(s3.relay.gets("model.safetensors")) == 1


# --- digests --------------------------------------------------------------------------------


def test_a_tampered_object_stops_the_build_naming_it_and_both_digests(
    s3: S3Stub, tmp_path: Path
) -> None:
    files = model_files()
    tampered = bytearray(files["model.safetensors"])
    tampered[len(tampered) // 2] ^= 0xFF
    # Swapped by someone who could write the bucket but not the spec: no SHA-256 checksum
    # to give it away before the download, so the bytes themselves are caught.
    put(s3, "model.safetensors", bytes(tampered), checksum=False)
    pins = {"model.safetensors": sha(files["model.safetensors"])}
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch_s3_model(model(sha256=pins), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-s3 model.safetensors: sha256 mismatch for "
        f"s3://{BUCKET}/{PREFIX}/model.safetensors: expected {pins['model.safetensors']}, "
        f"got {sha(bytes(tampered))}"
    )
    assert blobs(tmp_path) == set()
    assert list((tmp_path / "store" / "partial").iterdir()) == []


def test_a_bucket_checksum_that_disagrees_with_the_pin_stops_before_any_download(
    s3: S3Stub, tmp_path: Path
) -> None:
    files = model_files()
    other = files["model.safetensors"][::-1]
    put(s3, "model.safetensors", other)  # with the bucket's SHA-256 of the other bytes
    pinned = sha(files["model.safetensors"])
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch_s3_model(model(sha256={"model.safetensors": pinned}), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-s3: s3://{BUCKET}/{PREFIX}/model.safetensors: the digests disagree "
        f"(pinned in the spec: {pinned}; the bucket's SHA-256 checksum: {sha(other)})"
    )
    assert s3.relay.gets("model.safetensors") == []


def test_a_changed_sha256sums_file_is_refused(s3: S3Stub, tmp_path: Path) -> None:
    files = model_files()
    put(s3, "config.json", files["config.json"], checksum=False)
    honest = sums_file({"config.json": files["config.json"]})
    rewritten = sums_file({"config.json": b"{}"})
    put(s3, "SHA256SUMS", rewritten, checksum=False)
    pin = {"sha256sums": {"file": "SHA256SUMS", "sha256": sha(honest)}}
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch_s3_model(model(**pin), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-s3: s3://{BUCKET}/{PREFIX}/SHA256SUMS: sha256 mismatch: the spec pins "
        f"{sha(honest)}, the bucket holds {sha(rewritten)}"
    )
    assert s3.relay.gets("config.json") == []


def test_an_object_without_any_digest_is_refused_by_name(s3: S3Stub, tmp_path: Path) -> None:
    files = model_files()
    put(s3, "model.safetensors", files["model.safetensors"])
    put(s3, "config.json", files["config.json"], checksum=False)  # CRC32 only: no sha256
    with pytest.raises(BuildError) as caught:
        fetch_s3_model(model(), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-s3: s3://{BUCKET}/{PREFIX}/config.json has no digest to check it against "
        "(no pin in the spec, no line in a pinned sha256sums file, no full-object SHA-256 "
        "checksum in the bucket)"
    )
    assert caught.value.hint is not None and "config.json: <sha256>" in caught.value.hint
    assert s3.relay.gets("model.safetensors") == []


# --- missing, denied, unreachable -----------------------------------------------------------


def test_a_pinned_object_missing_from_the_bucket_is_named(s3: S3Stub, tmp_path: Path) -> None:
    files = model_files()
    put(s3, "model.safetensors", files["model.safetensors"])
    pins = {"tokenizer.json": sha(files["tokenizer.json"])}
    with pytest.raises(FetchError) as caught:
        fetch_s3_model(model(sha256=pins), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-s3: s3://{BUCKET}/{PREFIX}/tokenizer.json is missing: the spec pins it, "
        "but the bucket has no such object"
    )
    assert s3.relay.gets("model.safetensors") == []


def test_an_object_removed_after_listing_is_named(s3: S3Stub, tmp_path: Path) -> None:
    files = model_files()
    put(s3, "model.safetensors", files["model.safetensors"])
    job = fetcher(tmp_path)
    # Removed between the listing and the download, as a concurrent clean-up would.
    original = job.fetch_all

    def remove_then_fetch(wanted: Any) -> Any:
        s3.client().delete_object(Bucket=BUCKET, Key=f"{PREFIX}/model.safetensors")
        return original(wanted)

    job.fetch_all = remove_then_fetch  # type: ignore[method-assign]
    with pytest.raises(FetchError) as caught:
        fetch_s3_model(model(), job)
    assert caught.value.message == (
        f"model tiny-s3: s3://{BUCKET}/{PREFIX}/model.safetensors is missing (NoSuchKey)"
    )


def test_a_missing_bucket_is_named(s3: S3Stub, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch_s3_model(model(source="s3://no-such-bucket/m"), fetcher(tmp_path))
    assert caught.value.message == (
        "model tiny-s3: the S3 endpoint has no bucket for s3://no-such-bucket/m/ (NoSuchBucket)"
    )


def test_access_denied_is_named_without_the_credentials(
    s3: S3Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import settings

    put(s3, "model.safetensors", b"weights")
    # From here the server checks every request's key against its IAM users: it knows none.
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with pytest.raises(FetchError) as caught:
        fetch_s3_model(model(), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-s3: access denied to s3://{BUCKET}/{PREFIX}/ (InvalidAccessKeyId)"
    )
    assert caught.value.hint is not None and "s3:GetObject" in caught.value.hint
    text = caught.value.message + caught.value.hint
    assert s3.access_key not in text and s3.secret_key not in text


def test_an_unreachable_endpoint_is_named_without_its_address(
    s3: S3Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    job = Fetcher(
        BlobStore(tmp_path / "store"), None, NullProgress(), policy=RetryPolicy(2, 0.01, 2)
    )
    with pytest.raises(FetchError) as caught:
        fetch_s3_model(model(), job)
    assert caught.value.message == (
        f"model tiny-s3: cannot reach the S3 endpoint to read s3://{BUCKET}/{PREFIX}/ "
        "(EndpointConnectionError)"
    )
    assert str(port) not in caught.value.message + str(caught.value.hint)


# --- resume and parallel --------------------------------------------------------------------


def test_a_connection_cut_mid_object_resumes_where_it_stopped(s3: S3Stub, tmp_path: Path) -> None:
    files = model_files()
    for rel, data in files.items():
        put(s3, rel, data)
    s3.relay.cut_path = "model.safetensors"
    s3.relay.cut_after = 1 << 20
    got = fetch_s3_model(model(), fetcher(tmp_path))
    assert {f.relative: f.sha256 for f in got} == {rel: sha(d) for rel, d in files.items()}
    first, second = s3.relay.gets("model.safetensors")
    assert first is None and second is not None
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    # The body bytes that arrived before the cut (1 MiB less the response headers) are kept.
    assert (1 << 20) - 4096 < resumed_at < 1 << 20
    weights = files["model.safetensors"]
    assert (tmp_path / "store" / layout.blob_path(sha(weights))).read_bytes() == weights


def test_a_partial_file_from_an_earlier_build_is_continued(s3: S3Stub, tmp_path: Path) -> None:
    weights = model_files()["model.safetensors"]
    put(s3, "model.safetensors", weights)
    partial = tmp_path / "store" / "partial" / f"{sha(weights)}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(weights[:12345])
    fetch_s3_model(model(), fetcher(tmp_path))
    # Only the remainder travelled.
    assert s3.relay.gets("model.safetensors") == ["bytes=12345-"]
    assert not partial.exists()
    assert blobs(tmp_path) == {sha(weights)}


def test_objects_are_fetched_several_at_once(s3: S3Stub, tmp_path: Path) -> None:
    import threading

    shards = {f"model-{i:05d}-of-00004.safetensors": bytes([i]) * (1 << 20) for i in range(4)}
    for rel, data in shards.items():
        put(s3, rel, data)
    seen: set[str] = set()
    job = fetcher(tmp_path, jobs=4)
    original = job.fetch_one

    def fetch_one(wanted: Any) -> Any:
        seen.add(threading.current_thread().name)
        return original(wanted)

    job.fetch_one = fetch_one  # type: ignore[method-assign]
    got = fetch_s3_model(model(), job)
    assert [f.relative for f in got] == sorted(shards)
    assert len(seen) > 1


def test_a_failed_build_prints_neither_the_endpoint_nor_the_credentials(
    s3: S3Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    # The SDK's own error names the endpoint URL: --debug prints the traceback, still without it.
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("s3-models", models=[{"name": "tiny-s3", "source": SOURCE}]))
    keygen(tmp_path / "key", "s3 test")
    monkeypatch.setattr(registry, "SOURCES", {"models-s3": registry.SOURCES["models-s3"]})
    code, out, err = run_cli(
        capsys,
        "--debug",
        "build-bundle",
        str(spec),
        "-o",
        str(tmp_path / "bundle"),
        "--sign-key",
        str(tmp_path / "key"),
        "--no-cache",
    )
    assert code == FetchError.exit_code
    assert (
        f"Error: model tiny-s3: cannot reach the S3 endpoint to read s3://{BUCKET}/{PREFIX}/ "
        "(EndpointConnectionError)" in err
    )
    assert "Traceback" in err  # --debug did print one
    leaked = [s for s in (str(port), s3.access_key, s3.secret_key) if s in out + err]
    assert leaked == []
    assert not (tmp_path / "bundle").exists()
