"""Signing, verify-bundle and pack/unpack against a tamper matrix, on real files and keys."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry
from appliance.bundle.pack import unpack
from appliance.bundle.signing import keygen, sign
from appliance.bundle.verify import open_bundle, verify_dir
from appliance.errors import (
    ApplianceError,
    BundleCorruptError,
    BundleLayoutError,
    BundleSignatureError,
)
from appliance.install.stage import stage
from tests.fixtures.bundles import (
    KINDS,
    after_trust,
    flip_byte,
    make_bundle,
    member,
    packed,
    path_of,
    read_entries,
    rewrite,
    sign_bundle,
)
from tests.fixtures.hostile import pax, raw_header


def test_intact_bundle_verifies(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    report = verify_dir(bundle, keys[1])
    assert report.files == len(KINDS)
    assert report.bytes == sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) - sum(
        (bundle / name).stat().st_size for name in layout.TRUST_FILES
    )


def test_stock_openssh_and_coreutils_verify_the_same_bundle(
    tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    key_type, key_b64 = keys[1].read_text().split()[:2]
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"appliance-bundle-signer {key_type} {key_b64}\n")
    for name in (layout.SHA256SUMS, layout.MANIFEST):
        command = ["ssh-keygen", "-Y", "verify", "-f", str(allowed)]
        command += ["-I", "appliance-bundle-signer", "-n", "appliance-bundle", "-s", f"{name}.sig"]
        checked = subprocess.run(
            command,
            input=(bundle / name).read_bytes(),
            cwd=bundle,
            capture_output=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
    sums = subprocess.run(
        ["sha256sum", "-c", layout.SHA256SUMS], cwd=bundle, capture_output=True, check=False
    )
    assert sums.returncode == 0, sums.stdout
    # The stock tools notice tampering too.
    flip_byte(path_of(bundle, "deb"))
    assert (
        subprocess.run(
            ["sha256sum", "-c", "--quiet", layout.SHA256SUMS],
            cwd=bundle,
            capture_output=True,
            check=False,
        ).returncode
        == 1
    )


@pytest.mark.parametrize("kind", KINDS)
def test_byte_flip_in_each_kind_is_corrupt_content(
    tmp_path: Path, keys: tuple[Path, Path, Path], kind: str
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    target = path_of(bundle, kind)
    flip_byte(target)
    error = expect(BundleCorruptError, verify_dir, bundle, keys[1])
    relative = target.relative_to(bundle).as_posix()
    assert [p.path for p in error.problems] == [relative]
    assert error.problems[0].message.startswith("sha256 ")
    assert error.exit_code == 11


def test_truncation_is_corrupt_content(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    target = path_of(bundle, "model")
    size = target.stat().st_size
    target.chmod(0o644)
    os.truncate(target, size - 10)
    error = expect(BundleCorruptError, verify_dir, bundle, keys[1])
    assert error.problems[0].message == f"size {size - 10}, manifest says {size}"


def test_missing_file_is_corrupt_content(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    target = path_of(bundle, "wheel")
    target.unlink()
    error = expect(BundleCorruptError, verify_dir, bundle, keys[1])
    assert [(p.path, p.message) for p in error.problems] == [
        (target.relative_to(bundle).as_posix(), "missing")
    ]


def test_extra_file_is_unsafe_layout(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    (bundle / "blobs/sha256/evil").write_text("payload nobody signed")
    error = expect(BundleLayoutError, verify_dir, bundle, keys[1])
    assert [(p.path, p.message) for p in error.problems] == [
        ("blobs/sha256/evil", "not in the signed manifest")
    ]
    assert error.exit_code == 12


def test_wrong_key_is_a_bad_signature(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    error = expect(BundleSignatureError, verify_dir, bundle, keys[2])
    assert error.message == f"{bundle}: signed by another key than {keys[2]}"
    assert error.exit_code == 10


def test_modified_manifest_is_a_bad_signature(
    tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    manifest = bundle / layout.MANIFEST
    manifest.write_bytes(manifest.read_bytes().replace(b'"release":"1"', b'"release":"2"'))
    error = expect(BundleSignatureError, verify_dir, bundle, keys[1])
    assert error.message == f"{bundle}: signature does not verify with {keys[1]}"


def test_missing_signature_is_a_bad_signature(
    tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    (bundle / layout.MANIFEST_SIG).unlink()
    error = expect(BundleSignatureError, verify_dir, bundle, keys[1])
    assert "manifest.json.sig is missing" in error.message


def test_signed_manifest_with_traversal_is_unsafe_layout(
    tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    evil = FileEntry(path="../outside", sha256="0" * 64, size=0, kind="file", component="file")
    bundle = make_bundle(tmp_path, keys[0], extra=[evil])
    error = expect(BundleLayoutError, verify_dir, bundle, keys[1])
    assert [(p.path, p.message) for p in error.problems] == [
        ("../outside", "unsafe path in manifest: '..' in path")
    ]


@pytest.mark.parametrize(
    ("kind", "name", "reason"),
    [
        ("model", "../../../etc/cron.d/evil", "'..' in path"),
        ("model", "/etc/cron.d/evil", "absolute path"),
        ("wheel", "sub/pip-24.0-py3-none-any.whl", "a file name with '/'"),
        ("file", "..", "'..' in path"),
    ],
)
def test_signed_manifest_with_an_escaping_name_is_unsafe_layout(
    tmp_path: Path, keys: tuple[Path, Path, Path], kind: str, name: str, reason: str
) -> None:
    # Names become paths on the hosts (a model's files, a wheel's file name): the roles run as
    # root, so a signed manifest still may not name anything outside their directories.
    evil = FileEntry(
        path=f"blobs/sha256/{'0' * 64}",
        sha256="0" * 64,
        size=0,
        kind=kind,
        component="x",
        name=name,
    )
    bundle = make_bundle(tmp_path, keys[0], extra=[evil])
    error = expect(BundleLayoutError, verify_dir, bundle, keys[1])
    assert (evil.path, f"unsafe name in manifest: {name!r}: {reason}") in [
        (p.path, p.message) for p in error.problems
    ]


def test_escaping_symlink_is_unsafe_layout(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    target = path_of(bundle, "file")
    target.unlink()
    target.symlink_to("/etc/passwd")
    error = expect(BundleLayoutError, verify_dir, bundle, keys[1])
    assert error.problems[0].message == "symbolic link to /etc/passwd escapes the bundle"


def test_device_file_is_unsafe_layout(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    os.mknod(bundle / "blobs/null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    error = expect(BundleLayoutError, verify_dir, bundle, keys[1])
    assert [(p.path, p.message) for p in error.problems] == [
        ("blobs/null", "device file (bundles hold regular files only)")
    ]


# --- packed bundles -----------------------------------------------------------------------


def test_pack_is_reproducible_and_round_trips(
    tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    data = packed(bundle)
    assert data == packed(bundle)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names[:4] == list(layout.PACK_FIRST)
    archive = tmp_path / "b.tar"
    archive.write_bytes(data)
    unpack(archive, tmp_path / "out", keys[1])
    for path in bundle.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / path.relative_to(bundle)).read_bytes() == path.read_bytes()
    verify_dir(tmp_path / "out", keys[1])


TAR_CASES = {
    "path-traversal": (
        after_trust(member("../../etc/cron.d/evil", body=b"x")),
        BundleLayoutError,
        "'..' in path",
    ),
    "absolute-path": (
        after_trust(member("/etc/evil", body=b"x")),
        BundleLayoutError,
        "absolute path",
    ),
    "escaping-symlink": (
        after_trust(member("blobs/link", tarfile.SYMTYPE, link="/etc/shadow")),
        BundleLayoutError,
        "symbolic link to /etc/shadow",
    ),
    "hardlink": (
        after_trust(member("blobs/hard", tarfile.LNKTYPE, link="/etc/shadow")),
        BundleLayoutError,
        "hard link to /etc/shadow",
    ),
    "device-file": (
        after_trust(member("blobs/dev", tarfile.CHRTYPE)),
        BundleLayoutError,
        "device file",
    ),
    "extra-file": (
        after_trust(member("blobs/sha256/extra", body=b"x")),
        BundleLayoutError,
        "not in the signed manifest",
    ),
}


@pytest.mark.parametrize(("change", "error", "text"), TAR_CASES.values(), ids=TAR_CASES.keys())
def test_tampered_archive_is_refused_before_anything_is_written(
    tmp_path: Path,
    keys: tuple[Path, Path, Path],
    change: object,
    error: type[ApplianceError],
    text: str,
) -> None:
    data = rewrite(packed(make_bundle(tmp_path, keys[0])), change)
    archive = tmp_path / "evil.tar"
    archive.write_bytes(data)
    caught = expect(error, unpack, archive, tmp_path / "dest" / "bundle", keys[1])
    assert text in caught.message
    # Nothing left behind: no destination, no staging directory, nothing outside.
    assert list((tmp_path / "dest").iterdir()) == []
    assert not (tmp_path / "etc").exists()
    # Verifying the archive without extracting it refuses it the same way.
    expect(error, check_archive, archive, keys[1])


def test_corrupt_member_in_archive_removes_partial_extraction(
    tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    deb = path_of(bundle, "deb").relative_to(bundle).as_posix()

    def flip(info: tarfile.TarInfo, body: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name == deb:
            body = bytes([body[0] ^ 1]) + body[1:]
        return [(info, body)]

    archive = tmp_path / "bad.tar"
    archive.write_bytes(rewrite(packed(bundle), flip))
    caught = expect(BundleCorruptError, unpack, archive, tmp_path / "dest" / "b", keys[1])
    assert [p.path for p in caught.problems] == [deb]
    assert list((tmp_path / "dest").iterdir()) == []


def test_archive_signed_by_another_key_is_refused(
    tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    archive = tmp_path / "b.tar"
    archive.write_bytes(packed(make_bundle(tmp_path, keys[0])))
    expect(BundleSignatureError, unpack, archive, tmp_path / "dest" / "b", keys[2])
    assert list((tmp_path / "dest").iterdir()) == []


def test_truncated_archive_is_refused(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    data = packed(make_bundle(tmp_path, keys[0]))
    archive = tmp_path / "short.tar"
    archive.write_bytes(data[: len(data) // 2])
    caught = expect(BundleCorruptError, unpack, archive, tmp_path / "dest" / "b", keys[1])
    assert "not a complete tar archive" in caught.message
    assert list((tmp_path / "dest").iterdir()) == []


def check_archive(archive: Path, pubkey: Path) -> None:
    with open_bundle(archive, pubkey) as bundle:
        bundle.check()


def expect(error: type[ApplianceError], function: object, *args: object) -> ApplianceError:
    with pytest.raises(error) as caught:
        function(*args)  # type: ignore[operator]
    return caught.value


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    keygen(tmp_path / "k", "x")
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(ApplianceError, match="already exists"):
        keygen(tmp_path / "k", "x")
    assert (tmp_path / "k").read_bytes() == before
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    shutil.rmtree(tmp_path)


# --- the tamper matrix, extended by the hardening classes ----------------------------------
# Each row is refused by open_bundle before a byte is staged: install's staging directory
# (<root>/releases and its .incoming-* scratch) stays exactly as it was, which is all an
# install changes on a host before the playbook runs.


def trust_prefix(data: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    return data[: members[len(layout.PACK_FIRST)].offset]


RAW_AFTER_TRUST: dict[str, tuple[bytes, type[ApplianceError], str]] = {
    "negative-size-reads-the-rest": (
        raw_header(b"blobs/x", b"-0000000001") + bytes(4096),
        BundleCorruptError,
        "not octal",
    ),
    "pax-size-of-60000-digits": (
        pax({b"size": b"9" * 60000}) + raw_header(b"blobs/x"),
        BundleCorruptError,
        "is not a number",
    ),
    "chain-of-pax-headers": (
        pax({b"comment": b"x"}) * 100 + raw_header(b"blobs/x"),
        BundleLayoutError,
        "extended tar headers",
    ),
    "a-fifo": (raw_header(b"blobs/pipe", kind=b"6"), BundleLayoutError, "special file"),
    "a-sparse-file": (raw_header(b"blobs/s", kind=b"S"), BundleLayoutError, "special file"),
    "an-escape-sequence-in-a-name": (
        pax({b"path": b"blobs/\x1b]0;owned\x07"}) + raw_header(b"x"),
        BundleLayoutError,
        "control or format character",
    ),
    "a-name-component-of-300-bytes": (
        pax({b"path": b"blobs/" + b"n" * 300}) + raw_header(b"x"),
        BundleLayoutError,
        "longer than 255 bytes",
    ),
    "a-flood-of-directory-entries": (
        b"".join(raw_header(f"d{i}/".encode(), kind=b"5") for i in range(2000)),
        BundleLayoutError,
        "directory entries",
    ),
}


@pytest.mark.parametrize(
    ("hostile", "error", "text"), RAW_AFTER_TRUST.values(), ids=RAW_AFTER_TRUST.keys()
)
def test_hostile_headers_after_the_signature_are_refused_before_staging(
    tmp_path: Path,
    keys: tuple[Path, Path, Path],
    hostile: bytes,
    error: type[ApplianceError],
    text: str,
) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(
        trust_prefix(packed(make_bundle(tmp_path, keys[0]))) + hostile + bytes(1024)
    )
    caught = expect(error, stage_archive, archive, keys[1], tmp_path / "root")
    assert text in caught.message
    assert_nothing_staged(tmp_path / "root")
    expect(error, unpack, archive, tmp_path / "dest" / "bundle", keys[1])
    assert list((tmp_path / "dest").iterdir()) == []


def swapped_sums_signature(tmp_path: Path, key: Path) -> Path:
    bundle = make_bundle(tmp_path, key)
    (tmp_path / "other").write_bytes(b"something else\n")
    sign(key, tmp_path / "other")
    (bundle / layout.SHA256SUMS_SIG).write_bytes((tmp_path / "other.sig").read_bytes())
    return bundle


def signed_with(**change: object) -> object:
    def make(tmp_path: Path, key: Path) -> Path:
        bundle = make_bundle(tmp_path, key)
        manifest = read_entries(bundle).model_copy(update=change)
        for name in layout.TRUST_FILES:
            (bundle / name).unlink()
        sign_bundle(bundle, manifest, key)
        return bundle

    return make


def duplicated_path(tmp_path: Path, key: Path) -> Path:
    bundle = make_bundle(tmp_path, key)
    manifest = read_entries(bundle)
    (first,) = [e for e in manifest.files if e.kind == "model"]
    # The same blob with another claim about its bytes: which one is true? (Two models built
    # from one file may list one blob twice only when every entry names the same bytes.)
    twice = first.model_copy(update={"component": "model-again", "size": first.size + 1})
    return signed_with(files=[*manifest.files, twice])(tmp_path / "again", key)  # type: ignore[operator]


SIGNED_BUT_HOSTILE: dict[str, tuple[object, type[ApplianceError], str]] = {
    "sha256sums-signature-over-other-data": (
        swapped_sums_signature,
        BundleSignatureError,
        "SHA256SUMS: signature does not verify",
    ),
    "a-release-label-that-climbs": (signed_with(release=".."), BundleLayoutError, "unsafe paths"),
    "a-release-label-that-is-absolute": (
        signed_with(release="/etc/cron.d"),
        BundleLayoutError,
        "unsafe paths",
    ),
    "a-path-listed-twice": (duplicated_path, BundleLayoutError, "unsafe paths"),
}


@pytest.mark.parametrize(
    ("make", "error", "text"), SIGNED_BUT_HOSTILE.values(), ids=SIGNED_BUT_HOSTILE.keys()
)
def test_a_signed_but_hostile_bundle_is_refused_before_staging(
    tmp_path: Path,
    keys: tuple[Path, Path, Path],
    make: object,
    error: type[ApplianceError],
    text: str,
) -> None:
    bundle = make(tmp_path / "made", keys[0])  # type: ignore[operator]
    caught = expect(error, stage_directory, bundle, keys[1], tmp_path / "root")
    assert text in caught.message
    assert_nothing_staged(tmp_path / "root")
    archive = tmp_path / "b.tar"
    archive.write_bytes(tar_as_is(bundle))
    expect(error, stage_archive, archive, keys[1], tmp_path / "root")
    assert_nothing_staged(tmp_path / "root")


def tar_as_is(bundle: Path) -> bytes:
    """The bundle's files in an archive, trust files first, as a publisher's own tool might
    write it (appliance pack checks the manifest and would refuse these)."""
    names = [n for n in layout.PACK_FIRST if (bundle / n).is_file()]
    names += sorted(
        p.relative_to(bundle).as_posix()
        for p in bundle.rglob("*")
        if p.is_file() and p.name not in layout.PACK_FIRST
    )
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(bundle / name, arcname=name)
    return out.getvalue()


def stage_archive(archive: Path, pubkey: Path, root: Path) -> None:
    root.mkdir(exist_ok=True)
    with open_bundle(archive, pubkey) as bundle:
        stage(bundle, root)


def stage_directory(bundle_dir: Path, pubkey: Path, root: Path) -> None:
    stage_archive(bundle_dir, pubkey, root)


def assert_nothing_staged(root: Path) -> None:
    assert list(root.iterdir()) == []
