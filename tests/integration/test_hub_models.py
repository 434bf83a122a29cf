"""Hub models: hf:// against a loopback stand-in for the hub's endpoints (tests/fixtures/hub.py),
ollama:// against the real registry on loopback (tests/fixtures/registry.py). Every expected
digest is checked while the bytes stream; a mismatch leaves nothing in the bundle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from appliance.build import BuildOptions, BuildReport, build_bundle
from appliance.bundle import layout
from appliance.bundle.inspect import read_manifest, summary
from appliance.bundle.signing import keygen
from appliance.bundle.store import BlobStore
from appliance.bundle.verify import verify_dir
from appliance.errors import BuildError, ChecksumMismatchError, FetchError
from appliance.fetchers.download import Fetcher
from appliance.fetchers.hf import fetch_hf_model
from appliance.fetchers.http import RetryPolicy
from appliance.fetchers.ollama import fetch_ollama_model, parse_ref
from appliance.progress import NullProgress
from appliance.spec.models import HuggingFaceModel, OllamaModel
from tests.fixtures.hub import Hub, serve
from tests.fixtures.ollama import MODEL, Pushed, push_ollama_model, stored_blob
from tests.fixtures.registry import registry
from tests.fixtures.specs import spec_text

REPO = "appliance-test/tiny-llama"
WEIGHTS = os.urandom(3 << 20)
FILES: dict[str, bytes] = {
    "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 256}).encode(),
    "tokenizer.json": json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}).encode(),
    "model.safetensors": WEIGHTS,
    "README.md": b"# tiny-llama\nrandom weights for tests\n",
    "original/consolidated.pth": os.urandom(1 << 20),
}
FAST = RetryPolicy(attempts=3, backoff=0.01, timeout=10)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hf_model(commit: str, **extra: object) -> HuggingFaceModel:
    fields = {"name": "tiny-hf", "source": f"hf://{REPO}", "revision": commit, **extra}
    return HuggingFaceModel.model_validate(fields)


def fetcher(root: Path) -> Fetcher:
    return Fetcher(BlobStore(root / "store"), None, NullProgress(), jobs=3, policy=FAST)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    with serve(tmp_path / "hub") as running:
        monkeypatch.setenv("HF_ENDPOINT", running.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield running


def blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "store" / layout.BLOBS).iterdir()}


# --- hf:// ---------------------------------------------------------------------------------


def test_hf_fetches_the_selected_files_each_under_its_sha256(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub.add_commit(REPO, FILES)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    model = hf_model(commit, include=["*.json", "*.safetensors", "*.md"], exclude=["README*"])
    files, fetched = fetch_hf_model(model, fetcher(tmp_path))
    assert [(f.relative, f.sha256, f.size) for f in files] == [
        (name, sha(FILES[name]), len(FILES[name]))
        for name in ("config.json", "model.safetensors", "tokenizer.json")
    ]
    assert blobs(tmp_path) == {f.sha256 for f in files}
    assert not any(item.from_cache for item in fetched)
    # The token goes to the hub, never to the CDN the weights are redirected to.
    auth = [(r[1], r[2].get("authorization")) for r in hub.requests]
    assert all(value == "Bearer hf_not_a_real_token" for path, value in auth if "/cdn/" not in path)
    assert [value for path, value in auth if "/cdn/" in path] == [None]
    assert not hub.requested(f"/{REPO}/resolve/{commit}/original")


def test_hf_refuses_an_answer_for_another_commit(hub: Hub, tmp_path: Path) -> None:
    commit = hub.add_commit(REPO, FILES)
    hub.answer_commit = "f" * 40
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch_hf_model(hf_model(commit), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-hf: the hub answered for commit {'f' * 40} of {REPO}, expected the "
        f"pinned revision {commit}"
    )
    assert not hub.requested(f"/{REPO}/resolve/")
    assert blobs(tmp_path) == set()


def test_hf_unknown_revision_is_named(hub: Hub, tmp_path: Path) -> None:
    hub.add_commit(REPO, FILES)
    with pytest.raises(FetchError) as caught:
        fetch_hf_model(hf_model("a" * 40), fetcher(tmp_path))
    assert caught.value.message == f"model tiny-hf: {REPO} has no revision {'a' * 40}"


@pytest.mark.parametrize(
    ("name", "check"),
    [("model.safetensors", "sha256 mismatch"), ("config.json", "git blob id mismatch")],
)
def test_hf_file_with_other_bytes_is_caught_and_nothing_kept(
    hub: Hub, tmp_path: Path, name: str, check: str
) -> None:
    commit = hub.add_commit(REPO, FILES)
    other = bytearray(FILES[name])
    other[len(other) // 2] ^= 0xFF  # same size, one byte differs
    hub.tamper[name] = bytes(other)
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch_hf_model(hf_model(commit, include=[name]), fetcher(tmp_path))
    assert caught.value.message.startswith(f"model tiny-hf {name}: {check} for ")
    assert blobs(tmp_path) == set()
    assert list((tmp_path / "store" / "partial").iterdir()) == []


def test_hf_resumes_a_cut_download_where_it_stopped(hub: Hub, tmp_path: Path) -> None:
    commit = hub.add_commit(REPO, FILES)
    hub.cut_once.add("model.safetensors")
    files, _ = fetch_hf_model(hf_model(commit, include=["*.safetensors"]), fetcher(tmp_path))
    assert [f.sha256 for f in files] == [sha(WEIGHTS)]
    ranges = [r[2].get("range") for r in hub.requested("/cdn/")]
    assert ranges == [None, f"bytes={len(WEIGHTS) // 2}-"]


def test_hf_refuses_a_file_path_outside_the_model(hub: Hub, tmp_path: Path) -> None:
    commit = hub.add_commit(REPO, {"config.json": b"{}"})
    (entry,) = hub.repos[REPO][commit].values()
    hub.repos[REPO][commit] = {"../escape.json": dataclasses.replace(entry, path="../escape.json")}
    with pytest.raises(FetchError, match=r"lists a file '\.\./escape\.json' \('\.\.' in path\)"):
        fetch_hf_model(hf_model(commit), fetcher(tmp_path))


def test_hf_patterns_that_select_nothing_are_an_error(hub: Hub, tmp_path: Path) -> None:
    commit = hub.add_commit(REPO, FILES)
    with pytest.raises(BuildError, match="include/exclude select none of the 5 files"):
        fetch_hf_model(hf_model(commit, include=["*.gguf"]), fetcher(tmp_path))


# --- ollama:// -----------------------------------------------------------------------------


def ollama_model(address: str, digest: str) -> OllamaModel:
    return OllamaModel(
        name="tiny-ollama", source=f"ollama://{address}/library/tiny:1", digest=digest
    )


def test_ollama_ref_defaults_and_scheme() -> None:
    ref = parse_ref(OllamaModel(name="m", source="ollama://llama3:8b", digest="sha256:" + "0" * 64))
    assert ref.repository_url == "https://registry.ollama.ai/v2/library/llama3"
    assert ref.manifest_name == "manifests/registry.ollama.ai/library/llama3/8b"
    loop = parse_ref(ollama_model("127.0.0.2:5000", "sha256:" + "0" * 64))
    assert loop.repository_url == "http://127.0.0.2:5000/v2/library/tiny"
    remote = parse_ref(ollama_model("10.0.0.1:5000", "sha256:" + "0" * 64))
    assert remote.scheme == "https"


@pytest.fixture
def pushed(tmp_path: Path) -> Iterator[tuple[str, Pushed, Path]]:
    with registry(tmp_path / "registry") as address:
        yield (
            address,
            push_ollama_model(address, "library/tiny", "1", os.urandom(2 << 20)),
            (tmp_path / "registry"),
        )


def test_ollama_refuses_a_manifest_other_than_the_pinned_one(
    pushed: tuple[str, Pushed, Path], tmp_path: Path
) -> None:
    address, model, _ = pushed
    wrong = "sha256:" + sha(b"another manifest")
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch_ollama_model(ollama_model(address, wrong), fetcher(tmp_path))
    assert caught.value.message == (
        f"model tiny-ollama: the manifest of ollama://{address}/library/tiny:1 is not the "
        f"pinned one (expected {wrong.removeprefix('sha256:')}, got "
        f"{model.digest.removeprefix('sha256:')})"
    )
    assert blobs(tmp_path) == set()


def test_ollama_blob_corrupted_in_the_registry_is_caught(
    pushed: tuple[str, Pushed, Path], tmp_path: Path
) -> None:
    address, model, root = pushed
    (weights,) = [h for h, d in model.blobs.items() if len(d) == 2 << 20]
    stored = stored_blob(root, weights)
    data = bytearray(stored.read_bytes())
    data[4096] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch_ollama_model(ollama_model(address, model.digest), fetcher(tmp_path))
    assert caught.value.message.startswith(
        f"model tiny-ollama sha256:{weights[:12]}: sha256 mismatch for "
        f"http://{address}/v2/library/tiny/blobs/sha256:{weights}"
    )
    assert weights not in blobs(tmp_path)


# --- whole bundles -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """b1: an hf model, an ollama model and a local one; d2: a delta after one weight file of
    the hf model changed."""
    root = tmp_path_factory.mktemp("hub-models")
    keygen(root / "key", "hub models test")
    (root / "local.gguf").write_bytes(b"GGUF" + os.urandom(4096))
    with (
        serve(root / "hub") as hub,
        registry(root / "registry") as address,
        mock.patch.dict(os.environ, {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": ""}),
    ):
        first = hub.add_commit(REPO, FILES)
        changed = {**FILES, "model.safetensors": os.urandom(3 << 20)}
        second = hub.add_commit(REPO, changed)
        ollama = push_ollama_model(address, "library/tiny", "1", os.urandom(1 << 20))
        reports: dict[str, BuildReport] = {}
        for name, commit, base in (("b1", first, None), ("d2", second, "b1")):
            spec = root / f"{name}.yaml"
            spec.write_text(
                spec_text(
                    "hub-models",
                    name,
                    stack={"orchestrator": "systemd", "registry": "none"},
                    models=[
                        {
                            "name": "tiny-hf",
                            "source": f"hf://{REPO}",
                            "revision": commit,
                            "exclude": ["original/*"],
                        },
                        {
                            "name": "tiny-ollama",
                            "source": f"ollama://{address}/library/tiny:1",
                            "digest": ollama.digest,
                        },
                        {"name": "tiny-local", "source": "local.gguf", "format": "gguf"},
                    ],
                )
            )
            reports[name] = build_bundle(
                BuildOptions(
                    spec,
                    root / name,
                    root / "key",
                    cache=Path.home() / ".cache" / "appliance",
                    base=root / base / layout.MANIFEST if base else None,
                )
            )
    yield {
        "root": root,
        "reports": reports,
        "ollama": ollama,
        "changed": changed,
        "first": first,
        "address": address,
    }


pytestmark_bundles = pytest.mark.network  # the installer wheels come from PyPI (cached after once)


def entries(bundle: Path, component: str) -> dict[str, dict[str, object]]:
    manifest = json.loads((bundle / layout.MANIFEST).read_bytes())
    return {f["name"]: f for f in manifest["files"] if f["component"] == component}


@pytestmark_bundles
def test_bundle_lists_hf_files_with_their_sha256(bundles: dict[str, object]) -> None:
    root = bundles["root"]
    assert isinstance(root, Path)
    listed = entries(root / "b1", "tiny-hf")
    assert {name: (e["sha256"], e["size"], e["kind"]) for name, e in listed.items()} == {
        name: (sha(data), len(data), "model")
        for name, data in FILES.items()
        if not name.startswith("original/")
    }
    for entry in listed.values():
        assert sha((root / "b1" / str(entry["path"])).read_bytes()) == entry["sha256"]
    manifest = read_manifest(root / "b1")
    (component,) = [c for c in manifest.components if c.name == "tiny-hf"]
    assert (component.kind, component.version, component.source) == (
        "model",
        bundles["first"],
        f"hf://{REPO}",
    )
    assert verify_dir(root / "b1", root / "key.pub").files == len(manifest.files)


@pytestmark_bundles
def test_ollama_models_dir_laid_out_from_the_bundle(
    bundles: dict[str, object], tmp_path: Path
) -> None:
    root, pushed, address = bundles["root"], bundles["ollama"], bundles["address"]
    assert isinstance(root, Path) and isinstance(pushed, Pushed)
    ollama_models = tmp_path / "ollama"
    # What the install side does: each file at its name under OLLAMA_MODELS.
    listed = entries(root / "b1", "tiny-ollama")
    for name, entry in listed.items():
        target = ollama_models / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((root / "b1" / str(entry["path"])).read_bytes())
    manifest_file = ollama_models / "manifests" / str(address) / "library" / "tiny" / "1"
    assert manifest_file.read_bytes() == pushed.manifest
    assert "sha256:" + sha(manifest_file.read_bytes()) == pushed.digest
    document = json.loads(manifest_file.read_bytes())
    assert document["layers"][0]["mediaType"] == MODEL
    on_disk = {p.name: sha(p.read_bytes()) for p in (ollama_models / "blobs").iterdir()}
    assert all(name == f"sha256-{digest}" for name, digest in on_disk.items())
    assert set(on_disk) == {
        d["digest"].replace(":", "-") for d in [document["config"], *document["layers"]]
    }
    assert len(listed) == 1 + len(on_disk)
    manifest = read_manifest(root / "b1")
    (component,) = [c for c in manifest.components if c.name == "tiny-ollama"]
    assert (component.version, component.source) == (
        pushed.digest,
        f"ollama://{address}/library/tiny:1",
    )


@pytestmark_bundles
def test_inspect_lists_each_model_with_files_and_bytes(bundles: dict[str, object]) -> None:
    root, pushed = bundles["root"], bundles["ollama"]
    assert isinstance(root, Path) and isinstance(pushed, Pushed)
    models = {
        m["name"]: (m["files"], m["bytes"]) for m in summary(read_manifest(root / "b1"))["models"]
    }
    hf_files = [d for n, d in FILES.items() if not n.startswith("original/")]
    assert models == {
        "tiny-hf": (len(hf_files), sum(map(len, hf_files))),
        "tiny-local": (1, 4100),
        "tiny-ollama": (
            1 + len(pushed.blobs),
            len(pushed.manifest) + sum(map(len, pushed.blobs.values())),
        ),
    }


@pytestmark_bundles
def test_delta_after_one_changed_weight_file_ships_only_that_file(
    bundles: dict[str, object],
) -> None:
    root, changed, reports = bundles["root"], bundles["changed"], bundles["reports"]
    assert isinstance(root, Path) and isinstance(changed, dict) and isinstance(reports, dict)
    new = sha(changed["model.safetensors"])
    assert sorted(p.name for p in (root / "d2" / layout.BLOBS).iterdir()) == [new]
    # Only the changed file was downloaded; the rest came from the cache (git files too).
    assert (reports["d2"].fetched_count, reports["d2"].fetched_bytes) == (
        1,
        len(changed["model.safetensors"]),
    )
    assert verify_dir(root / "d2", root / "key.pub", base=root / "b1").unchecked_from_base == 0


@pytestmark_bundles
def test_a_tampered_hf_file_fails_the_build_and_leaves_nothing(
    bundles: dict[str, object], tmp_path: Path
) -> None:
    root = bundles["root"]
    assert isinstance(root, Path)
    with serve(tmp_path / "hub") as hub:
        weights = os.urandom(len(WEIGHTS))  # not in the cache from the builds above
        commit = hub.add_commit(REPO, {**FILES, "model.safetensors": weights})
        hub.tamper["model.safetensors"] = os.urandom(len(WEIGHTS))
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            spec_text(
                "hub-models",
                "x",
                stack={"orchestrator": "systemd", "registry": "none"},
                models=[{"name": "tiny-hf", "source": f"hf://{REPO}", "revision": commit}],
            )
        )
        cache = Path.home() / ".cache" / "appliance"  # the installer's wheels, cached
        with (
            mock.patch.dict(os.environ, {"HF_ENDPOINT": hub.endpoint}),
            pytest.raises(
                ChecksumMismatchError, match=r"^model tiny-hf model\.safetensors: sha256"
            ),
        ):
            build_bundle(BuildOptions(spec, tmp_path / "out", root / "key", cache=cache))
    # No bundle, no staging directory, and neither the bytes nor a partial file in the cache.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "spec.yaml"]
    assert not (cache / layout.BLOBS / sha(hub.tamper["model.safetensors"])).exists()
    assert not (cache / "partial" / f"{sha(weights)}.part").exists()
