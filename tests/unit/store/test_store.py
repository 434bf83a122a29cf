"""The model store (appliance.store: the object_store role's module_utils) against an S3 server
(moto, the stand-in for MinIO: tests/fixtures/minio_standin.py) and against a directory."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.store import (
    DirectoryStore,
    S3Store,
    StoreError,
    audit,
    load_config,
    open_store,
    publish,
)
from tests.fixtures.minio_standin import S3Server, s3_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as running:
        yield running


@pytest.fixture(params=["s3", "directory"])
def store(
    request: pytest.FixtureRequest, server: S3Server, tmp_path: Path
) -> S3Store | DirectoryStore:
    bucket = f"models-{os.urandom(4).hex()}"
    made: S3Store | DirectoryStore
    if request.param == "s3":
        made = S3Store(
            server.endpoint, server.access_key, server.secret_key, buckets={"models": bucket}
        )
    else:
        made = DirectoryStore(str(tmp_path / "store"), {"models": bucket})
    assert made.ensure_bucket("models") is True
    assert made.ensure_bucket("models") is False
    return made


def model_file(directory: Path, size: int, name: str = "model.gguf") -> tuple[str, str, int]:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return hashlib.sha256(path.read_bytes()).hexdigest(), str(path), size


def overwrite(store: S3Store | DirectoryStore, server: S3Server, key: str, data: bytes) -> None:
    """Change an object behind the store's back: with boto3 (S3) or on disk (directory)."""
    if isinstance(store, S3Store):
        client: Any = server.boto3()
        name = key.rsplit("/", 1)[-1]
        client.put_object(
            Bucket=store.bucket("models"), Key=key, Body=data, Metadata={"sha256": name}
        )
    else:
        Path(store.root, store.bucket("models"), key).write_bytes(data)


def test_publish_names_each_object_by_its_digest_and_reads_it_back(
    store: S3Store | DirectoryStore, tmp_path: Path
) -> None:
    files = [model_file(tmp_path, 3000, "a.gguf"), model_file(tmp_path, 10, "b.json")]
    report = publish(store, "models", files)
    assert sorted(report.uploaded) == sorted(f[0] for f in files)
    assert sorted(report.verified) == sorted(f[0] for f in files)
    assert report.present == []
    for sha256, path, size in files:
        info = store.stat("models", sha256)
        assert info is not None
        assert (info.key, info.size, info.sha256) == (f"sha256/{sha256}", size, sha256)
        assert store.read_digest("models", sha256) == sha256
        fetched = tmp_path / "fetched" / sha256
        store.fetch("models", sha256, str(fetched))
        assert fetched.read_bytes() == Path(path).read_bytes()
    assert audit(store, "models", [f[0] for f in files]) == []


def test_s3_objects_carry_the_digest_in_their_metadata(server: S3Server, tmp_path: Path) -> None:
    store = S3Store(
        server.endpoint, server.access_key, server.secret_key, buckets={"models": "meta"}
    )
    store.ensure_bucket("models")
    sha256, path, _ = model_file(tmp_path, 100)
    publish(store, "models", [(sha256, path, 100)])
    client: Any = server.boto3()
    head = client.head_object(Bucket="meta", Key=f"sha256/{sha256}")
    assert head["Metadata"] == {"sha256": sha256}


def test_publishing_again_uploads_nothing(
    server: S3Server, store: S3Store | DirectoryStore, tmp_path: Path
) -> None:
    files = [model_file(tmp_path, 2000)]
    publish(store, "models", files)
    before = _versions(server, store, files[0][0])
    again = publish(store, "models", files)
    assert again.uploaded == [] and again.verified == []
    assert again.present == [files[0][0]]
    assert _versions(server, store, files[0][0]) == before


def _versions(server: S3Server, store: S3Store | DirectoryStore, sha256: str) -> object:
    # What the store itself says about the object: S3's ETag and modification time, or the
    # file's inode and modification time; a second upload would change them.
    if isinstance(store, S3Store):
        client: Any = server.boto3()
        head = client.head_object(Bucket=store.bucket("models"), Key=f"sha256/{sha256}")
        return head["ETag"], head["LastModified"]
    stat = Path(store.root, store.bucket("models"), f"sha256/{sha256}").stat()
    return stat.st_ino, stat.st_mtime_ns


def test_an_object_publish_did_not_write_is_replaced(server: S3Server, tmp_path: Path) -> None:
    store = S3Store(
        server.endpoint, server.access_key, server.secret_key, buckets={"models": "own"}
    )
    store.ensure_bucket("models")
    sha256, path, size = model_file(tmp_path, 64)
    client: Any = server.boto3()
    client.put_object(Bucket="own", Key=f"sha256/{sha256}", Body=b"w" * 64)  # no metadata
    report = publish(store, "models", [(sha256, path, size)])
    assert (report.uploaded, report.verified) == ([sha256], [sha256])
    assert audit(store, "models", [sha256]) == []


def test_audit_names_an_object_changed_in_the_store(
    server: S3Server, store: S3Store | DirectoryStore, tmp_path: Path
) -> None:
    good, bad = model_file(tmp_path, 500, "good"), model_file(tmp_path, 500, "bad")
    publish(store, "models", [good, bad])
    overwrite(store, server, f"sha256/{bad[0]}", b"x" * 500)
    tampered = hashlib.sha256(b"x" * 500).hexdigest()
    assert audit(store, "models", [good[0], bad[0]]) == [
        {"key": f"sha256/{bad[0]}", "problem": f"bytes have sha256 {tampered}"}
    ]


def test_audit_names_a_missing_object(store: S3Store | DirectoryStore, tmp_path: Path) -> None:
    present = model_file(tmp_path, 10)
    publish(store, "models", [present])
    assert audit(store, "models", [present[0], "0" * 64]) == [
        {"key": f"sha256/{'0' * 64}", "problem": "missing"}
    ]


def test_publish_refuses_a_file_that_does_not_match_its_digest(
    store: S3Store | DirectoryStore, tmp_path: Path
) -> None:
    sha256, path, size = model_file(tmp_path, 64)
    Path(path).write_bytes(b"y" * 64)  # the file changed after it was hashed
    with pytest.raises(StoreError, match=sha256):
        publish(store, "models", [(sha256, path, size)])


def test_fetch_of_a_changed_object_fails_and_leaves_nothing(
    server: S3Server, store: S3Store | DirectoryStore, tmp_path: Path
) -> None:
    sha256, path, size = model_file(tmp_path, 300)
    publish(store, "models", [(sha256, path, size)])
    overwrite(store, server, f"sha256/{sha256}", b"z" * 300)
    dest = tmp_path / "cache" / sha256
    with pytest.raises(StoreError, match=f"expected {sha256}"):
        store.fetch("models", sha256, str(dest))
    assert list(dest.parent.iterdir()) == []


def test_large_files_go_up_in_parts(server: S3Server, tmp_path: Path) -> None:
    store = S3Store(
        server.endpoint,
        server.access_key,
        server.secret_key,
        buckets={"models": "parts"},
        part_size=5 << 20,  # S3's smallest part
    )
    store.ensure_bucket("models")
    sha256, path, size = model_file(tmp_path, (11 << 20) + 7)
    report = publish(store, "models", [(sha256, path, size)])
    assert report.verified == [sha256]
    info = store.stat("models", sha256)
    assert info is not None and (info.size, info.sha256) == (size, sha256)


def test_a_wrong_secret_is_refused_by_the_server(server: S3Server) -> None:
    wrong = S3Store(server.endpoint, server.access_key, "not-the-secret")
    with pytest.raises(StoreError, match="HTTP 403"):
        wrong.ensure_bucket("models")


def test_a_presigned_url_fetches_the_object_without_credentials(tmp_path: Path) -> None:
    # moto checks header signatures only; presigned GETs run against a server without auth.
    with s3_server(tmp_path, auth=False) as open_server:
        store = S3Store(open_server.endpoint, "presign-key", "presign-secret")
        store.ensure_bucket("models")
        sha256, path, size = model_file(tmp_path, 1000)
        publish(store, "models", [(sha256, path, size)])
        url = store.url("models", sha256, expires=600)
        assert "X-Amz-Signature=" in url and "presign-secret" not in url
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
            assert hashlib.sha256(answer.read()).hexdigest() == sha256


def test_presigned_url_signature_matches_botocore(server: S3Server) -> None:
    """Our presigned URL, re-signed by botocore's own SigV4 query signer at the same instant."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    store = S3Store(server.endpoint, server.access_key, server.secret_key)
    url = store.url("models", "a" * 64, expires=600)
    base, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    signer = S3SigV4QueryAuth(
        Credentials(server.access_key, server.secret_key), "s3", "us-east-1", expires=600
    )
    request = AWSRequest(method="GET", url=base)
    request.context["timestamp"] = params["X-Amz-Date"]
    signer.add_auth(request)
    assert f"X-Amz-Signature={params['X-Amz-Signature']}" in request.url


def test_config_reads_the_credentials_from_a_root_only_file(
    server: S3Server, tmp_path: Path
) -> None:
    secrets = tmp_path / "credentials.env"
    secrets.write_text(
        f"MINIO_ROOT_USER={server.access_key}\nMINIO_ROOT_PASSWORD={server.secret_key}\n"
    )
    config = tmp_path / "store.json"
    config.write_text(
        json.dumps(
            {
                "kind": "s3",
                "endpoint": server.endpoint,
                "credentials_file": str(secrets),
                "access_key_var": "MINIO_ROOT_USER",
                "secret_key_var": "MINIO_ROOT_PASSWORD",
                "buckets": {"models": "from-config"},
            }
        )
    )
    store = open_store(load_config(str(config)))
    assert isinstance(store, S3Store)
    assert store.ensure_bucket("models") is True
    secrets.write_text("MINIO_ROOT_USER=x\n")
    with pytest.raises(StoreError, match="no MINIO_ROOT_PASSWORD="):
        load_config(str(config))


def test_config_names_the_backend(tmp_path: Path) -> None:
    config = tmp_path / "store.json"
    config.write_text(json.dumps({"kind": "directory", "root": str(tmp_path)}))
    assert isinstance(open_store(load_config(str(config))), DirectoryStore)
    config.write_text('{"kind": "ftp"}')
    with pytest.raises(StoreError, match="kind must be s3 or directory"):
        load_config(str(config))
