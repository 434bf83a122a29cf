"""Site models in the S3 store (object_store: minio), against moto's server, the stand-in for
MinIO (tests/fixtures/minio_standin.py): published by digest through the store interface,
never uploaded twice, the signed manifest beside them, found by install, audited by verify."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import SiteModelError
from appliance.install.verify_models import Allowed
from appliance.site import manifest as site_manifest
from appliance.site import models as site_models
from appliance.site.models import SitePaths
from appliance.site.verify import site_allowed
from appliance.store import audit, load_config, open_store
from tests.fixtures.minio_standin import S3Server, s3_server, store_config
from tests.fixtures.servers import free_port

GGUF = b"GGUF" + bytes(range(256)) * 4
SHA = hashlib.sha256(GGUF).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as running:
        yield running


@pytest.fixture
def paths(tmp_path: Path, server: S3Server) -> SitePaths:
    config = store_config(tmp_path / "object-store", server, f"models-{os.urandom(4).hex()}")
    return SitePaths(tmp_path / "site", tmp_path / "store", config)


def bucket(paths: SitePaths) -> str:
    assert paths.store_config is not None
    name: str = json.loads(paths.store_config.read_text())["buckets"]["models"]
    return name


def model_dir(root: Path, data: bytes = GGUF) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.gguf").write_bytes(data)
    return root


def test_add_publishes_into_the_s3_store_with_the_signed_manifest_beside(
    tmp_path: Path, paths: SitePaths, server: S3Server
) -> None:
    model, made_key, report = site_models.add_to_store(
        model_dir(tmp_path / "ft"), "support-v3", paths, {}
    )
    assert made_key
    assert report is not None
    assert (report.uploaded, report.present, report.verified) == ([SHA], [], [SHA])
    assert model.digest == f"sha256:{SHA}"
    client: Any = server.boto3()
    got = client.get_object(Bucket=bucket(paths), Key=f"sha256/{SHA}")
    assert got["Body"].read() == GGUF
    assert got["Metadata"] == {"sha256": SHA}
    # The S3 store holds the files; the directory store stays empty.
    assert not paths.blob(SHA).exists()
    assert not paths.store.exists()
    # The signed manifest, kept on the depot, and its copy in the store, byte for byte.
    assert site_manifest.load(paths.site_dir).models == [model]
    for name in ("models.json", "models.json.sig", "site-key.pub"):
        stored = client.get_object(Bucket=bucket(paths), Key=f"site/{name}")["Body"].read()
        assert stored == (paths.site_dir / name).read_bytes()


def test_the_same_bytes_again_upload_nothing(
    tmp_path: Path, paths: SitePaths, server: S3Server
) -> None:
    site_models.add_to_store(model_dir(tmp_path / "ft"), "support-v3", paths, {})
    client: Any = server.boto3()
    before = client.head_object(Bucket=bucket(paths), Key=f"sha256/{SHA}")
    # The same checkpoint under another name (or an add interrupted after its upload).
    model, made_key, report = site_models.add_to_store(
        model_dir(tmp_path / "again"), "support-v3-copy", paths, {}
    )
    assert not made_key
    assert report is not None
    assert (report.uploaded, report.present, report.verified) == ([], [SHA], [])
    after = client.head_object(Bucket=bucket(paths), Key=f"sha256/{SHA}")
    assert after["LastModified"] == before["LastModified"]
    assert after["ETag"] == before["ETag"]
    names = [m.name for m in site_manifest.load(paths.site_dir).models]
    assert names == ["support-v3", "support-v3-copy"]
    assert model.files[0].sha256 == SHA


def test_install_takes_site_models_from_the_s3_store_alone(
    tmp_path: Path, paths: SitePaths, server: S3Server
) -> None:
    site_models.add(model_dir(tmp_path / "ft"), "support-v3", paths, {})
    (model,) = site_models.for_install(paths, {}, "minio")
    # No src: every node fetches the file from the store by its digest, like a bundle file.
    assert model["files"] == [
        {"name": "model.gguf", "path": f"site/{SHA}", "sha256": SHA, "size": len(GGUF)}
    ]
    assert model["origin"] == "site"
    # A filesystem store has no such file: refused, naming it.
    with pytest.raises(SiteModelError, match=r"model\.gguf .* is missing from the store"):
        site_models.for_install(paths, {}, "filesystem")
    client: Any = server.boto3()
    client.delete_object(Bucket=bucket(paths), Key=f"sha256/{SHA}")
    with pytest.raises(SiteModelError) as missing:
        site_models.for_install(paths, {}, "minio")
    assert f"{server.endpoint} or has another size" in missing.value.message


def test_a_model_added_before_the_s3_store_is_published_from_the_directory(
    tmp_path: Path, paths: SitePaths
) -> None:
    before = SitePaths(paths.site_dir, paths.store, tmp_path / "no-store.json")
    site_models.add(model_dir(tmp_path / "ft"), "support-v3", before, {})
    (model,) = site_models.for_install(paths, {}, "minio")
    # The object_store role's publish reads it from src into the S3 store at install.
    assert model["files"][0]["src"] == str(paths.blob(SHA))


def test_remove_deletes_objects_no_other_model_uses(
    tmp_path: Path, paths: SitePaths, server: S3Server
) -> None:
    site_models.add(model_dir(tmp_path / "a"), "a", paths, {})
    site_models.add(model_dir(tmp_path / "b"), "b", paths, {})
    client: Any = server.boto3()
    site_models.remove("a", paths, keep=set())
    assert client.head_object(Bucket=bucket(paths), Key=f"sha256/{SHA}")["ContentLength"] == len(
        GGUF
    )
    stored = client.get_object(Bucket=bucket(paths), Key="site/models.json")["Body"].read()
    assert [m["name"] for m in json.loads(stored)["models"]] == ["b"]
    site_models.remove("b", paths, keep=set())
    listed = client.list_objects_v2(Bucket=bucket(paths), Prefix="sha256/")
    assert listed.get("KeyCount") == 0


def test_verify_audits_the_site_models_objects(
    tmp_path: Path, paths: SitePaths, server: S3Server
) -> None:
    site_models.add(model_dir(tmp_path / "ft"), "support-v3", paths, {})
    site, check = site_allowed(paths.site_dir)
    assert check is not None and check.passed
    expected = Allowed.of(site).files  # what verify hands the store audit (install/verify.py)
    assert SHA in expected
    assert paths.store_config is not None
    store = open_store(load_config(str(paths.store_config)))
    assert audit(store, "models", expected) == []
    client: Any = server.boto3()
    client.put_object(
        Bucket=bucket(paths), Key=f"sha256/{SHA}", Body=b"GGUF changed", Metadata={"sha256": SHA}
    )
    changed = hashlib.sha256(b"GGUF changed").hexdigest()
    assert audit(store, "models", expected) == [
        {"key": f"sha256/{SHA}", "problem": f"bytes have sha256 {changed}"}
    ]
    client.delete_object(Bucket=bucket(paths), Key=f"sha256/{SHA}")
    assert audit(store, "models", expected) == [{"key": f"sha256/{SHA}", "problem": "missing"}]


def test_a_store_that_does_not_answer_changes_nothing(tmp_path: Path, server: S3Server) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    silent = S3Server(endpoint, server.access_key, server.secret_key)
    config = store_config(tmp_path / "object-store", silent, "models")
    paths = SitePaths(tmp_path / "site", tmp_path / "store", config)
    with pytest.raises(SiteModelError) as refused:
        site_models.add(model_dir(tmp_path / "ft"), "support-v3", paths, {})
    assert refused.value.message.startswith(f"the object store {endpoint} refused or failed")
    assert "upload of the model's files" in refused.value.message
    assert site_manifest.load(paths.site_dir).models == []


def test_remove_with_a_store_that_does_not_answer_changes_nothing(
    tmp_path: Path, paths: SitePaths, server: S3Server
) -> None:
    site_models.add(model_dir(tmp_path / "ft"), "support-v3", paths, {})
    signed = (paths.site_dir / "models.json").read_bytes()
    silent = S3Server(f"http://127.0.0.1:{free_port()}", server.access_key, server.secret_key)
    down = SitePaths(paths.site_dir, paths.store, store_config(tmp_path / "down", silent, "m"))
    with pytest.raises(SiteModelError, match="refused or failed a request for its models bucket"):
        site_models.remove("support-v3", down, keep=set())
    assert (paths.site_dir / "models.json").read_bytes() == signed
    client: Any = server.boto3()
    assert client.head_object(Bucket=bucket(paths), Key=f"sha256/{SHA}")["ContentLength"] == len(
        GGUF
    )
