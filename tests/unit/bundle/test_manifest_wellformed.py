"""A signed manifest is well-formed beyond its signature: one check, on every load.

Table: each field that becomes a path somewhere, with the value that would escape. Property:
whatever strings a manifest holds, a manifest that loads names only paths that stay inside the
bundle and the hosts' directories, each once, with no control character anywhere.
"""

from __future__ import annotations

import posixpath
import unicodedata
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from appliance.bundle import layout
from appliance.bundle.manifest import (
    BaseRef,
    Component,
    FileEntry,
    Manifest,
    RepoInfo,
    parse_manifest,
)
from appliance.errors import BundleLayoutError
from appliance.names import NAME_RE, RELEASE_RE
from tests.fixtures.bundles import new_manifest
from tests.fixtures.hostile import examples

ZERO = "0" * 64


def file_entry(path: str = f"blobs/sha256/{ZERO}", **fields: Any) -> FileEntry:
    values: dict[str, Any] = {"sha256": ZERO, "size": 0, "kind": "file", "component": "a"}
    values.update(fields)
    return FileEntry(path=path, **values)


def manifest(files: list[FileEntry] | None = None, **fields: Any) -> Manifest:
    components = fields.pop("components", [Component(name="a", kind="file")])
    return new_manifest(files if files is not None else [file_entry()], components, **fields)


CASES: dict[str, tuple[Manifest, str, str]] = {
    "a path listed twice": (
        manifest([file_entry(), file_entry(component="b", size=7)]),
        f"blobs/sha256/{ZERO}",
        "listed twice in manifest",
    ),
    "a blob path listed twice with another digest": (
        manifest([file_entry(), file_entry(component="b", sha256="1" * 64)]),
        f"blobs/sha256/{ZERO}",
        "listed twice in manifest",
    ),
    "a file outside the blob store listed twice": (
        manifest([file_entry("repo/a.deb"), file_entry("repo/a.deb", component="b")]),
        "repo/a.deb",
        "listed twice in manifest",
    ),
    "a model listed twice": (
        manifest(components=[Component(name="m", kind="model"), Component(name="m", kind="model")]),
        "components['m']",
        "model listed twice in manifest",
    ),
    "a release label with ..": (manifest(release=".."), "release", "unsafe release label"),
    "a release label that is a path": (
        manifest(release="1/../../etc"),
        "release",
        "unsafe release label",
    ),
    "a base release that is absolute": (
        manifest(base=BaseRef(sha256=ZERO, name="t", release="/etc")),
        "base.release",
        "unsafe release label",
    ),
    "a repo key outside the bundle": (
        manifest(repo=RepoInfo(path="repo", key="../../root/.gnupg/k", fingerprint="f")),
        "repo.key",
        "'..' in path",
    ),
    "a repo path that is absolute": (
        manifest(repo=RepoInfo(path="/srv/repo", key="repo/key", fingerprint="f")),
        "repo.path",
        "absolute path",
    ),
    "a model directory that escapes": (
        manifest([file_entry(kind="model", component="../../etc", name="x")]),
        f"blobs/sha256/{ZERO}",
        "unsafe component name",
    ),
    "a wheel set that escapes": (
        manifest([file_entry(kind="wheel", component="pip:../x", name="pip.whl")]),
        f"blobs/sha256/{ZERO}",
        "unsafe component name",
    ),
    "a plain file name with a slash": (
        manifest([file_entry(component="a/b")]),
        f"blobs/sha256/{ZERO}",
        "unsafe component name",
    ),
    "a path with a newline": (
        manifest([file_entry(path="blobs/a\nb")]),
        "blobs/a\nb",
        "control or format character U+000A",
    ),
    "a path component past NAME_MAX": (
        manifest([file_entry(path="blobs/" + "n" * 256)]),
        "blobs/" + "n" * 256,
        "longer than 255 bytes",
    ),
    "a path past the length bound": (
        manifest([file_entry(path="/".join(["d" * 200] * 6))]),
        "/".join(["d" * 200] * 6),
        f"longer than {layout.MAX_PATH} characters",
    ),
    "a version with an escape sequence": (
        manifest(components=[Component(name="a", kind="file", version="1\x1b[2J")]),
        "components[0].version",
        "control or format character U+001B",
    ),
    "a name with a bidi override": (
        manifest([file_entry(kind="deb", component="a", name="evil\u202egpj.deb")]),
        "files[0].name",
        "U+202E",
    ),
    "a role package with NUL": (
        manifest(role_packages={"firewall": ["nftables\x00"]}),
        "role_packages.firewall[0]",
        "U+0000",
    ),
}


@pytest.mark.parametrize(("bad", "where", "text"), CASES.values(), ids=CASES.keys())
def test_each_field_that_becomes_a_path_is_checked_on_load(
    bad: Manifest, where: str, text: str
) -> None:
    with pytest.raises(BundleLayoutError) as caught:
        parse_manifest(bad.canonical(), "bundle/manifest.json")
    assert any(p.path == where and text in p.message for p in caught.value.problems), (
        caught.value.problems
    )


def test_two_models_may_share_one_blob() -> None:
    # Two models served from one file (tests/integration/test_inference.py does): the build
    # stores the blob once and each model lists it; the entries agree on every byte.
    shared = manifest(
        [file_entry(), file_entry(component="b")],
        components=[Component(name="a", kind="model"), Component(name="b", kind="model")],
    )
    layout.check_manifest_paths(shared, "manifest.json")


def test_a_well_formed_manifest_loads() -> None:
    good = manifest(
        [file_entry(), file_entry(f"blobs/sha256/{'1' * 64}", kind="model", component="tiny")],
        components=[Component(name="a", kind="file"), Component(name="tiny", kind="model")],
        repo=RepoInfo(path="repo", key="repo/key.gpg", fingerprint="ABCD"),
        base=BaseRef(sha256=ZERO, name="t", release="2026.11.0"),
    )
    assert parse_manifest(good.canonical(), "m") == good


# --- property ------------------------------------------------------------------------------

# Text built from what breaks paths: separators, dots, NUL and other controls, bidi overrides,
# long runs, and ordinary characters.
PIECES = st.sampled_from(
    [
        "/",
        "..",
        ".",
        "a",
        "b-1",
        "\x00",
        "\n",
        "\x1b",
        "\u202e",
        "\u200b",
        "\\",
        "~",
        "é",
        "x" * 300,
    ]
)
HOSTILE = st.lists(PIECES, max_size=6).map("".join) | st.text(max_size=40)
SAFE_NAME = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
SAFE_RELEASE = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,10}", fullmatch=True)


def mostly(safe: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Well-formed values, one in about twelve hostile: both outcomes are exercised often."""
    return st.tuples(st.integers(0, 11), safe, HOSTILE).map(lambda t: t[2] if t[0] == 5 else t[1])


PATH = mostly(SAFE_NAME.map(lambda n: f"blobs/{n}"))
NAME = mostly(SAFE_NAME)
RELEASE = mostly(SAFE_RELEASE)


def stays_inside(path: str) -> bool:
    normal = posixpath.normpath(posixpath.join("/bundle", path))
    return normal.startswith("/bundle/") and normal != "/bundle"


def printable(text: str) -> bool:
    return not any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp", "Cs"} for c in text)


@examples(300)
@given(
    paths=st.lists(PATH, min_size=1, max_size=4),
    names=st.lists(NAME | st.none(), min_size=4, max_size=4),
    components=st.lists(NAME, min_size=4, max_size=4),
    kinds=st.lists(
        st.sampled_from(["file", "deb", "wheel", "model", "image"]), min_size=4, max_size=4
    ),
    release=RELEASE,
    base_release=RELEASE | st.none(),
    repo_key=PATH | st.none(),
)
def test_a_manifest_that_loads_names_only_safe_paths(
    paths: list[str],
    names: list[str | None],
    components: list[str],
    kinds: list[str],
    release: str,
    base_release: str | None,
    repo_key: str | None,
) -> None:
    files = [
        FileEntry(
            path=path,
            sha256=ZERO,
            size=0,
            kind=kinds[index],  # type: ignore[arg-type]
            component=components[index],
            name=names[index],
        )
        for index, path in enumerate(paths)
    ]
    candidate = new_manifest(
        files,
        [Component(name=c, kind=k) for c, k in zip(components, kinds, strict=True)],
        release=release,
        base=BaseRef(sha256=ZERO, name="t", release=base_release) if base_release else None,
        repo=RepoInfo(path="repo", key=repo_key, fingerprint="f") if repo_key else None,
    )
    try:
        loaded = parse_manifest(candidate.canonical(), "m")
    except BundleLayoutError as error:
        assert error.problems
        event("refused")
        return
    event("loaded")
    listed = [entry.path for entry in loaded.files]
    assert len(set(listed)) == len(listed)
    for entry in loaded.files:
        assert stays_inside(entry.path) and printable(entry.path)
        assert entry.path not in layout.TRUST_FILES
        assert all(len(part.encode()) <= layout.MAX_PATH_PART for part in entry.path.split("/"))
        if entry.name is not None:
            assert printable(entry.name)
            if entry.kind in {"model", "file", "wheel", "deb"}:
                assert stays_inside(entry.name)
        if entry.kind in {"model", "file"}:
            assert NAME_RE.match(entry.component)
        if entry.kind == "wheel":
            assert NAME_RE.match(entry.component.rpartition(":")[2])
    assert RELEASE_RE.match(loaded.release)
    if loaded.base is not None:
        assert RELEASE_RE.match(loaded.base.release)
    if loaded.repo is not None:
        assert stays_inside(loaded.repo.key)
