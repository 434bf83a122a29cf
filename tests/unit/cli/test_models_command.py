"""``appliance models``: exact output and exit codes, against a site directory and store in a
temporary directory and an installed release's manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle.manifest import Component, FileEntry
from tests.fixtures.bundles import new_manifest
from tests.fixtures.cli import run_cli
from tests.fixtures.minio_standin import S3Server, s3_server, store_config

GGUF = b"GGUF" + b"\1" * 2044
SHA = hashlib.sha256(GGUF).hexdigest()
BUNDLE_SHA = "b" * 64


@pytest.fixture
def where(tmp_path: Path) -> list[str]:
    """--root with an installed release that has model tiny-llama; --site-dir and --store."""
    release = tmp_path / "root" / "releases" / "2026.12"
    release.mkdir(parents=True)
    entry = FileEntry(
        path=f"blobs/sha256/{BUNDLE_SHA}", name="tiny.gguf", sha256=BUNDLE_SHA, size=3 << 20,
        kind="model", component="tiny-llama",
    )  # fmt: skip
    manifest = new_manifest([entry], [Component(name="tiny-llama", kind="model")], "2026.12")
    (release / "manifest.json").write_bytes(manifest.canonical())
    (tmp_path / "root" / "current").symlink_to("releases/2026.12")
    gateway = {"models": [{"name": "tiny-llama", "digest": f"sha256:{BUNDLE_SHA}",
                           "backend": "http://127.0.0.1:8081/"}]}  # fmt: skip
    (tmp_path / "gateway.json").write_text(json.dumps(gateway))
    model = tmp_path / "finetuned"
    model.mkdir()
    (model / "model.gguf").write_bytes(GGUF)
    return [
        "--root", str(tmp_path / "root"), "--site-dir", str(tmp_path / "site"),
        "--store", str(tmp_path / "store"),
    ]  # fmt: skip


def test_add_says_what_it_recorded_and_what_to_do_next(
    capsys: pytest.CaptureFixture[str], where: list[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(
        capsys, "models", "add", str(tmp_path / "finetuned"), "--name", "support-v3", *where
    )
    assert (code, err) == (0, "")
    site = tmp_path / "site"
    assert out == (
        f"Made the site's signing key {site}/site-key (root only) and its public key "
        f"{site}/site-key.pub.\n"
        f"Added site model support-v3: gguf, 1 file(s), 2.0 KiB, sha256:{SHA}.\n"
        "Run appliance install again (install.sh --pubkey KEY, as before) to serve it.\n"
    )
    private = (site / "site-key").read_text()
    assert private.split("\n", 1)[1][:40] not in out  # the key itself is never shown


def test_list_shows_origin_digest_size_and_where_served(
    capsys: pytest.CaptureFixture[str], where: list[str], tmp_path: Path
) -> None:
    run_cli(capsys, "models", "add", str(tmp_path / "finetuned"), "--name", "support-v3", *where)
    gateway = ["--gateway-config", str(tmp_path / "gateway.json")]
    code, out, err = run_cli(capsys, "models", "list", *where, *gateway)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "NAME        ORIGIN          FORMAT  SIZE     DIGEST" + " " * 67 + "SERVED",
        f"tiny-llama  bundle 2026.12  gguf    3.0 MiB  sha256:{BUNDLE_SHA}  http://127.0.0.1:8081/",
        f"support-v3  site            gguf    2.0 KiB  sha256:{SHA}  -",
    ]
    code, out, _ = run_cli(capsys, "models", "list", "--json", *where, *gateway)
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert rows["support-v3"]["origin"] == "site"
    assert rows["support-v3"]["served"] is None
    assert rows["tiny-llama"]["release"] == "2026.12"
    assert rows["tiny-llama"]["served"] == "http://127.0.0.1:8081/"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "DIR", "--name", "tiny-llama"],
         "Error: model name 'tiny-llama' belongs to a model of the installed bundle (release "
         "2026.12)\nHint: site models take names of their own: pass another --name\n"),
        (["add", "DIR", "--name", "../x"],
         "Error: model name '../x' is not allowed: use 1 to 63 lowercase letters, digits, '.', "
         "'_' or '-', starting with a letter or digit (it becomes a directory and a unit name "
         "on every host)\nHint: pass another --name, e.g. --name my-model-v2\n"),
        (["remove", "tiny-llama"],
         "Error: tiny-llama is a model of the installed bundle, not a site model\nHint: a "
         "bundle model leaves with its release; `appliance models list` shows origins\n"),
    ],
    ids=["bundle-name", "path-name", "remove-bundle-model"],
)  # fmt: skip
def test_refusals_exit_37_and_change_nothing(
    capsys: pytest.CaptureFixture[str],
    where: list[str],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    args = [str(tmp_path / "finetuned") if a == "DIR" else a for a in args]
    code, out, err = run_cli(capsys, "models", *args, *where)
    assert (code, out, err) == (37, "", message)
    assert not (tmp_path / "site").exists()
    assert not (tmp_path / "store").exists()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as running:
        yield running


def test_add_into_the_s3_store_says_what_it_uploaded(
    capsys: pytest.CaptureFixture[str], where: list[str], tmp_path: Path, s3: S3Server
) -> None:
    config = store_config(tmp_path / "object-store", s3, "cli-add")
    with_store = [*where, "--store-config", str(config)]
    code, out, err = run_cli(
        capsys, "models", "add", str(tmp_path / "finetuned"), "--name", "support-v3", *with_store
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[1:] == [
        f"Added site model support-v3: gguf, 1 file(s), 2.0 KiB, sha256:{SHA}.",
        "Run appliance install again (install.sh --pubkey KEY, as before) to serve it.",
        f"S3 store ({config}): uploaded 1 file(s), each read back and matched; 0 already there, "
        "not uploaded again. Any GPU node can serve it.",
    ]
    assert not (tmp_path / "store").exists()
    code, out, err = run_cli(
        capsys, "models", "add", str(tmp_path / "finetuned"), "--name", "copy", "--json",
        *with_store,
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert json.loads(out)["store"] == {"uploaded": [], "present": [SHA], "verified": []}


def test_an_unreadable_store_config_is_refused_and_nothing_changes(
    capsys: pytest.CaptureFixture[str], where: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "store.json"
    config.write_text('{"kind": "ftp"}')
    code, out, err = run_cli(
        capsys, "models", "add", str(tmp_path / "finetuned"), "--name", "support-v3", *where,
        "--store-config", str(config),
    )  # fmt: skip
    assert (code, out) == (37, "")
    assert f"cannot read the object store's configuration {config}: {config}: kind must be" in err
    assert not (tmp_path / "site").exists()
    assert not (tmp_path / "store").exists()
