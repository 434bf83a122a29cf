"""The site manifest: signed with a key made on site, refused when changed, names checked, the
store filled by digest, and the models handed to install in the roles' shape."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.bundle.manifest import FileEntry, model_digest
from appliance.bundle.signing import NAMESPACE as BUNDLE_NAMESPACE
from appliance.bundle.signing import sign_bytes
from appliance.errors import SiteModelError
from appliance.site import manifest as site_manifest
from appliance.site import models as site_models
from appliance.site.models import SitePaths

GGUF = b"GGUF" + bytes(range(256)) * 4


@pytest.fixture
def paths(tmp_path: Path) -> SitePaths:
    return SitePaths(tmp_path / "site", tmp_path / "store")


def model_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def gguf_dir(tmp_path: Path) -> Path:
    return model_dir(tmp_path / "finetuned", {"model.gguf": GGUF})


def test_add_records_each_file_signs_and_fills_the_store(gguf_dir: Path, paths: SitePaths) -> None:
    model, made_key = site_models.add(gguf_dir, "support-v3", paths, {})
    assert made_key
    sha = hashlib.sha256(GGUF).hexdigest()
    assert model.digest == f"sha256:{sha}"
    assert [(f.name, f.sha256, f.size) for f in model.files] == [("model.gguf", sha, len(GGUF))]
    assert model.format == "gguf"
    assert paths.blob(sha).read_bytes() == GGUF
    # What is on disk is what load() returns, signature checked.
    assert site_manifest.load(paths.site_dir).models == [model]
    document = json.loads((paths.site_dir / "models.json").read_bytes())
    assert document["kind"] == "appliance-site-models"
    assert [m["name"] for m in document["models"]] == ["support-v3"]
    # The object store's layout: the file under its digest, the signed record beside it.
    assert paths.blob(sha) == paths.store / "models" / "sha256" / sha
    for name in ("models.json", "models.json.sig", "site-key.pub"):
        stored = paths.store / "models" / "site" / name
        assert stored.read_bytes() == (paths.site_dir / name).read_bytes()
    assert not (paths.store / "models" / "site" / "site-key").exists()


def test_the_key_is_made_once_private_to_its_owner(gguf_dir: Path, paths: SitePaths) -> None:
    site_models.add(gguf_dir, "first", paths, {})
    private = paths.site_dir / "site-key"
    public = paths.site_dir / "site-key.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("ssh-ed25519 ")
    before = private.read_bytes()
    _, made_key = site_models.add(gguf_dir, "second", paths, {})
    assert not made_key
    assert private.read_bytes() == before


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_a_stock_ssh_keygen_verifies_the_site_manifest(gguf_dir: Path, paths: SitePaths) -> None:
    site_models.add(gguf_dir, "support-v3", paths, {})
    public = (paths.site_dir / "site-key.pub").read_text().split()
    allowed = paths.site_dir / "allowed"
    allowed.write_text(f"site {public[0]} {public[1]}\n")
    with (paths.site_dir / "models.json").open("rb") as stdin:
        done = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "site", "-n",
             site_manifest.NAMESPACE, "-s", str(paths.site_dir / "models.json.sig")],
            stdin=stdin, capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 'Good "appliance-site-models" signature' in done.stdout


def test_a_changed_manifest_is_refused(gguf_dir: Path, paths: SitePaths) -> None:
    site_models.add(gguf_dir, "support-v3", paths, {})
    manifest = paths.site_dir / "models.json"
    other = "0" * 64
    text = manifest.read_text()
    sha = hashlib.sha256(GGUF).hexdigest()
    manifest.write_text(text.replace(sha, other))
    with pytest.raises(SiteModelError) as refused:
        site_manifest.load(paths.site_dir)
    assert refused.value.exit_code == 37
    assert refused.value.message == (
        f"site manifest {manifest}: signature does not verify with "
        f"{paths.site_dir / 'site-key.pub'}; no site model is served from it"
    )


def test_a_signature_by_another_key_or_for_bundles_is_refused(
    gguf_dir: Path, paths: SitePaths, tmp_path: Path
) -> None:
    site_models.add(gguf_dir, "support-v3", paths, {})
    data = (paths.site_dir / "models.json").read_bytes()
    signature = paths.site_dir / "models.json.sig"
    # The site's own key, but a signature made for bundles: namespaces keep purposes apart.
    signature.write_bytes(sign_bytes(paths.site_dir / "site-key", data, BUNDLE_NAMESPACE))
    with pytest.raises(SiteModelError, match=r"the signature is malformed .*namespace"):
        site_manifest.load(paths.site_dir)
    site_manifest.ensure_key(tmp_path / "elsewhere")
    signature.write_bytes(
        sign_bytes(tmp_path / "elsewhere" / "site-key", data, site_manifest.NAMESPACE)
    )
    with pytest.raises(SiteModelError, match="signed by another key than"):
        site_manifest.load(paths.site_dir)


def test_a_missing_signature_is_refused(gguf_dir: Path, paths: SitePaths) -> None:
    site_models.add(gguf_dir, "support-v3", paths, {})
    (paths.site_dir / "models.json.sig").unlink()
    with pytest.raises(SiteModelError, match="cannot read it or its signature"):
        site_manifest.load(paths.site_dir)


def test_half_a_key_pair_is_refused(gguf_dir: Path, paths: SitePaths) -> None:
    site_models.add(gguf_dir, "support-v3", paths, {})
    (paths.site_dir / "site-key").unlink()
    with pytest.raises(SiteModelError, match="holds only half of the site's signing key pair"):
        site_models.add(gguf_dir, "other", paths, {})


@pytest.mark.parametrize(
    "name",
    ["Support", "../escape", "a/b", "", ".hidden", "-dash", "x" * 64, "white space", "ü"],
)
def test_names_that_cannot_be_paths_are_refused_and_nothing_is_written(
    gguf_dir: Path, paths: SitePaths, name: str
) -> None:
    with pytest.raises(SiteModelError) as refused:
        site_models.add(gguf_dir, name, paths, {})
    assert refused.value.message == (
        f"model name {name!r} is not allowed: use 1 to 63 lowercase letters, digits, '.', '_' "
        "or '-', starting with a letter or digit (it becomes a directory and a unit name on "
        "every host)"
    )
    assert not paths.site_dir.exists()
    assert not paths.store.exists()


def test_a_bundle_models_name_is_refused(gguf_dir: Path, paths: SitePaths) -> None:
    with pytest.raises(SiteModelError) as refused:
        site_models.add(gguf_dir, "tiny-llama", paths, {"tiny-llama": "2026.11.7"})
    assert refused.value.message == (
        "model name 'tiny-llama' belongs to a model of the installed bundle (release 2026.11.7)"
    )
    assert not paths.store.exists()


def test_a_site_models_name_is_taken_once(gguf_dir: Path, paths: SitePaths) -> None:
    first, _ = site_models.add(gguf_dir, "support-v3", paths, {})
    with pytest.raises(SiteModelError, match=r"site model 'support-v3' exists \(sha256:"):
        site_models.add(gguf_dir, "support-v3", paths, {})
    assert site_manifest.load(paths.site_dir).models == [first]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "holds no files"),
        ({"weights.bin": b"x"}, "neither a GGUF file nor *.safetensors weights"),
        ({"model.gguf": b"not a gguf"}, "does not start with the GGUF magic bytes"),
        ({"my model.gguf": GGUF}, "file names in a model directory are letters, digits"),
    ],
    ids=["empty", "no-weights", "bad-gguf", "space-in-name"],
)
def test_unusable_model_directories_are_refused(
    tmp_path: Path, paths: SitePaths, files: dict[str, bytes], message: str
) -> None:
    directory = model_dir(tmp_path / "model", files)
    directory.mkdir(exist_ok=True)
    with pytest.raises(SiteModelError, match=message.replace("*", r"\*")):
        site_models.add(directory, "m", paths, {})
    assert not (paths.site_dir / "models.json").exists()


def test_a_link_in_the_model_directory_is_refused(gguf_dir: Path, paths: SitePaths) -> None:
    (gguf_dir / "tokenizer.json").symlink_to("/etc/passwd")
    with pytest.raises(SiteModelError, match="is a link or special file"):
        site_models.add(gguf_dir, "m", paths, {})


def test_a_checkpoint_is_named_like_a_bundle_model_of_the_same_files(
    tmp_path: Path, paths: SitePaths
) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"\x08" + b"\0" * 15, "sub/t.json": b"1"}
    model, _ = site_models.add(model_dir(tmp_path / "ckpt", files), "ckpt", paths, {})
    assert model.format == "safetensors"
    entries = [
        FileEntry(path=n, name=n, sha256=hashlib.sha256(d).hexdigest(), size=len(d),
                  kind="model", component="ckpt")
        for n, d in files.items()
    ]  # fmt: skip
    assert model.digest == model_digest(entries)
    assert [f.name for f in model.files] == ["config.json", "model.safetensors", "sub/t.json"]


def test_remove_keeps_files_another_model_shares(
    gguf_dir: Path, paths: SitePaths, tmp_path: Path
) -> None:
    site_models.add(gguf_dir, "a", paths, {})
    site_models.add(gguf_dir, "b", paths, {})
    other = model_dir(tmp_path / "other", {"x.gguf": GGUF + b"!"})
    c, _ = site_models.add(other, "c", paths, {})
    shared = hashlib.sha256(GGUF).hexdigest()
    site_models.remove("a", paths, keep=set())
    assert paths.blob(shared).is_file()  # b has the same bytes
    site_models.remove("c", paths, keep=set())
    assert not paths.blob(c.files[0].sha256).exists()
    site_models.remove("b", paths, keep={shared})  # a bundle file with the same bytes
    assert paths.blob(shared).is_file()
    assert site_manifest.load(paths.site_dir).models == []
    with pytest.raises(SiteModelError, match=r"no site model named 'a' \(site models: none\)"):
        site_models.remove("a", paths, keep=set())


def test_install_gets_site_models_in_the_roles_shape(gguf_dir: Path, paths: SitePaths) -> None:
    assert site_models.for_install(paths, {}) == []
    model, _ = site_models.add(gguf_dir, "support-v3", paths, {})
    sha = model.files[0].sha256
    assert site_models.for_install(paths, {"tiny-llama": "1"}) == [
        {
            "name": "support-v3",
            "version": None,
            "format": "gguf",
            "source": "site",
            "origin": "site",
            "digest": f"sha256:{sha}",
            "files": [
                {"name": "model.gguf", "path": f"site/{sha}", "sha256": sha, "size": len(GGUF),
                 "src": str(paths.blob(sha))}
            ],
        }
    ]  # fmt: skip


def test_install_refuses_a_bundle_model_that_took_a_site_models_name(
    gguf_dir: Path, paths: SitePaths
) -> None:
    site_models.add(gguf_dir, "support-v3", paths, {})
    with pytest.raises(SiteModelError) as refused:
        site_models.for_install(paths, {"support-v3": "2027.1"})
    assert refused.value.message.startswith(
        "release 2027.1 has a model named 'support-v3', the name of a site model (sha256:"
    )


def test_install_refuses_a_file_missing_from_the_store(gguf_dir: Path, paths: SitePaths) -> None:
    model, _ = site_models.add(gguf_dir, "support-v3", paths, {})
    blob = paths.blob(model.files[0].sha256)
    blob.unlink()
    with pytest.raises(SiteModelError, match=r"model\.gguf .* is missing from the store"):
        site_models.for_install(paths, {})
