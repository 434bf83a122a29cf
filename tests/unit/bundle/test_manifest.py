"""The manifest: canonical bytes, parsing with a clear error, and what the roles read from it."""

from __future__ import annotations

import hashlib
import json

import pytest

from appliance.bundle.manifest import Component, FileEntry, model_digest, parse_manifest
from appliance.errors import BundleCorruptError
from tests.fixtures.bundles import new_manifest


def entry(path: str, data: bytes, kind: str, component: str, **fields: object) -> FileEntry:
    return FileEntry(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        kind=kind,  # type: ignore[arg-type]
        component=component,
        **fields,  # type: ignore[arg-type]
    )


GGUF = entry("blobs/sha256/a", b"gguf", "model", "tiny", name="tiny.gguf")
CONFIG = entry("blobs/sha256/b", b"{}", "model", "hf", name="config.json")
WEIGHTS = entry("blobs/sha256/c", b"w", "model", "hf", name="model.safetensors")
OLLAMA = entry("blobs/sha256/d", b"o", "model", "llama", name="blobs/sha256-d")
SIX = entry("blobs/sha256/e", b"six", "wheel", "wheels:extra", name="six-1.16.0-py3-none-any.whl")
PIP = entry("blobs/sha256/f", b"pip", "wheel", "wheels:installer", name="pip-24-py3-none-any.whl")
OWN = entry("blobs/sha256/g", b"ap", "wheel", "wheels:installer", name="appliance-0.1-py3.whl")
FILE = entry("blobs/sha256/h", b"bin", "file", "ollama-linux", name="ollama.tgz")
OLD = entry("blobs/sha256/i", b"old", "deb", "debs", name="jq.deb", from_base=True)

MANIFEST = new_manifest(
    [GGUF, CONFIG, WEIGHTS, OLLAMA, SIX, PIP, OWN, FILE, OLD],
    [
        Component(name="tiny", kind="model", version="gguf", source="local"),
        Component(name="hf", kind="model", version="0" * 40, source="hf://org/hf"),
        Component(name="llama", kind="model", version="sha256:1", source="ollama://llama:1b"),
        Component(name="debs", kind="deb"),
    ],
)


def test_canonical_bytes_are_sorted_compact_utf8_and_stable() -> None:
    manifest = MANIFEST.model_copy(update={"name": "café"})
    data = manifest.canonical()
    assert data.endswith(b"}\n") and b", " not in data and b": " not in data
    assert "café".encode() in data  # UTF-8, not \\u escapes
    document = json.loads(data)
    assert list(document) == sorted(document)
    assert parse_manifest(data, "m").canonical() == data


def test_a_manifest_that_does_not_parse_names_the_first_problem() -> None:
    document = json.loads(MANIFEST.canonical())
    document["files"][0]["sha256"] = "not-hex"
    with pytest.raises(BundleCorruptError) as caught:
        parse_manifest(json.dumps(document).encode(), "bundle/manifest.json")
    assert caught.value.message.startswith(
        "bundle/manifest.json: not a valid bundle manifest (1 problems, first: files.0.sha256: "
    )
    with pytest.raises(BundleCorruptError, match="not a valid bundle manifest"):
        parse_manifest(b"{", "m")


def test_models_group_files_per_model_with_format_and_digest() -> None:
    models = {m["name"]: m for m in MANIFEST.models()}
    assert list(models) == ["hf", "llama", "tiny"]
    assert models["tiny"]["format"] == "gguf"
    assert models["tiny"]["digest"] == f"sha256:{GGUF.sha256}"  # one file: its own sha256
    assert models["hf"]["format"] == "safetensors"
    assert [f["name"] for f in models["hf"]["files"]] == ["config.json", "model.safetensors"]
    listing = f"{CONFIG.sha256}  config.json\n{WEIGHTS.sha256}  model.safetensors\n"
    assert models["hf"]["digest"] == f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"
    assert models["llama"]["format"] == "ollama"


def test_a_renamed_file_changes_a_models_digest() -> None:
    renamed = CONFIG.model_copy(update={"name": "other.json"})
    assert model_digest([CONFIG, WEIGHTS]) != model_digest([renamed, WEIGHTS])


def test_wheel_sets_by_set_name_sorted_by_file_name() -> None:
    sets = MANIFEST.wheel_sets()
    assert {name: [w["name"] for w in wheels] for name, wheels in sets.items()} == {
        "installer": ["appliance-0.1-py3.whl", "pip-24-py3-none-any.whl"],
        "extra": ["six-1.16.0-py3-none-any.whl"],
    }
    assert sets["extra"][0] == {
        "name": SIX.name,
        "path": SIX.path,
        "sha256": SIX.sha256,
        "size": SIX.size,
    }


def test_shipped_leaves_out_what_the_base_holds_and_sizes_count_every_path() -> None:
    assert OLD.path in MANIFEST.by_path() and OLD.path not in MANIFEST.shipped()
    assert MANIFEST.total_size() == sum(e.size for e in MANIFEST.files)
    assert MANIFEST.plain_files() == [
        {
            "name": "ollama-linux",
            "file_name": "ollama.tgz",
            "path": FILE.path,
            "sha256": FILE.sha256,
            "size": FILE.size,
        }
    ]


def test_unknown_fields_are_refused() -> None:
    document = json.loads(MANIFEST.canonical())
    document["surprise"] = 1
    with pytest.raises(BundleCorruptError, match="surprise"):
        parse_manifest(json.dumps(document).encode(), "m")


def test_a_models_task_is_recorded_only_when_it_is_not_chat() -> None:
    embed = Component(name="embed", kind="model", version="gguf", source="local", task="embedding")
    manifest = new_manifest(
        [GGUF, entry("blobs/sha256/j", b"e", "model", "embed", name="e.gguf")],
        [Component(name="tiny", kind="model", version="gguf", source="local"), embed],
    )
    components = json.loads(manifest.canonical())["components"]
    assert [("task" in c, c.get("task")) for c in components] == [
        (False, None),
        (True, "embedding"),
    ]
    assert parse_manifest(manifest.canonical(), "m").canonical() == manifest.canonical()
    tasks = {m["name"]: m["task"] for m in manifest.models()}
    assert tasks == {"tiny": "chat", "embed": "embedding"}
