"""verify-bundle, inspect and unpack as a user meets them: one opener, exact output, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle.pack import pack
from tests.fixtures.bundles import KINDS, flip_byte, make_bundle, path_of
from tests.fixtures.cli import run_cli as run

Keys = tuple[Path, Path, Path]


@pytest.fixture
def bundle(tmp_path: Path, keys: Keys) -> Path:
    bundle = make_bundle(tmp_path, keys[0])
    with (tmp_path / "b.tar").open("wb") as out:
        pack(bundle, out)
    return bundle


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "tar"])
def test_verify_bundle_says_what_it_checked(
    capsys: pytest.CaptureFixture[str], bundle: Path, keys: Keys, packed: bool
) -> None:
    path = bundle.parent / "b.tar" if packed else bundle
    code, out, err = run(capsys, "verify-bundle", str(path), "--pubkey", str(keys[1]))
    assert (code, err) == (0, "")
    assert out.startswith(f"{path}: verified t 1: signature good, {len(KINDS)} files, ")


def test_verify_bundle_exit_codes_per_failure(
    capsys: pytest.CaptureFixture[str], bundle: Path, keys: Keys
) -> None:
    assert run(capsys, "verify-bundle", str(bundle), "--pubkey", str(keys[2]))[0] == 10
    flip_byte(path_of(bundle, "deb"))
    code, _, err = run(capsys, "verify-bundle", str(bundle), "--pubkey", str(keys[1]))
    assert code == 11
    assert err.startswith(f"Error: {bundle}: corrupt content: 1 file\n  blobs/sha256/")


def test_inspect_checks_the_signature_when_given_a_key(
    capsys: pytest.CaptureFixture[str], bundle: Path, keys: Keys
) -> None:
    archive = str(bundle.parent / "b.tar")
    code, out, _ = run(capsys, "--json", "inspect", archive, "--pubkey", str(keys[1]))
    assert code == 0
    assert (json.loads(out)["signature_checked"], json.loads(out)["name"]) == (True, "t")
    code, out, _ = run(capsys, "inspect", archive)
    assert code == 0
    assert "(not verified; see verify-bundle)" in out.splitlines()[1]
    code, _, err = run(capsys, "inspect", archive, "--pubkey", str(keys[2]))
    assert code == 10
    assert err.startswith(f"Error: {archive}: signed by another key than {keys[2]}")


def test_unpack_writes_only_a_verified_bundle(
    capsys: pytest.CaptureFixture[str], bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    archive = str(bundle.parent / "b.tar")
    code, out, _ = run(
        capsys, "unpack", archive, "-o", str(tmp_path / "out"), "--pubkey", str(keys[1])
    )
    assert code == 0
    assert out.startswith(f"unpacked and verified {archive} into {tmp_path / 'out'}: 8 files, ")
    code, _, err = run(
        capsys, "unpack", archive, "-o", str(tmp_path / "out"), "--pubkey", str(keys[1])
    )
    assert code == 12
    assert err.startswith(f"Error: {tmp_path / 'out'} already exists")


def test_inspect_says_what_the_minio_store_is(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from appliance.bundle import layout
    from appliance.bundle.manifest import Component
    from tests.fixtures.bundles import new_manifest

    manifest = new_manifest(
        [],
        [Component(name="minio", kind="file", version="RELEASE.2025-09-07T16-13-09Z")],
        stack={"object_store": "minio"},
    )
    (tmp_path / layout.MANIFEST).write_bytes(manifest.canonical())
    code, out, _ = run(capsys, "inspect", str(tmp_path))
    assert code == 0
    assert out.splitlines()[-1] == (
        "  note: object_store minio: MinIO stopped publishing binaries in 2025 and is licensed "
        "AGPL-3.0; this bundle carries the last published server release "
        "(RELEASE.2025-09-07T16-13-09Z, the spec's files: entry 'minio'). The store is used "
        "through plain S3 only, so SeaweedFS, Garage or Ceph RGW can replace it."
    )
    code, out, _ = run(capsys, "--json", "inspect", str(tmp_path))
    assert json.loads(out)["notes"][0].startswith("object_store minio: MinIO stopped publishing")
