"""open_bundle: one opening, the signature checked once, every byte hashed as it is read, from a
directory, a packed .tar or split parts; tampering before and after the opening."""

from __future__ import annotations

import gzip
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bundle import layout, verify
from appliance.bundle.pack import pack
from appliance.bundle.parts import PartWriter
from appliance.bundle.verify import open_bundle, verify_dir
from appliance.errors import (
    BundleCorruptError,
    BundleLayoutError,
    BundleSignatureError,
)
from tests.fixtures.bundles import (
    KINDS,
    after_trust,
    flip_byte,
    make_bundle,
    make_delta,
    member,
    packed,
    path_of,
    read_entries,
    rewrite,
    sign_bundle,
)

Keys = tuple[Path, Path, Path]
PAYLOAD = bytes(range(256)) * (10 << 10)  # 2.5 MiB: three parts of 1 MiB


def as_tar(bundle: Path, out: Path) -> Path:
    with out.open("wb") as handle:
        pack(bundle, handle)
    return out


def as_parts(bundle: Path, out: Path) -> Path:
    writer = PartWriter(out, 1 << 20)
    pack(bundle, writer)  # type: ignore[arg-type]
    return writer.close()


SOURCES: dict[str, Callable[[Path, Path], Path]] = {
    "dir": lambda bundle, _tmp: bundle,
    "tar": lambda bundle, tmp: as_tar(bundle, tmp / "b.tar"),
    "parts": lambda bundle, tmp: as_parts(bundle, tmp / "media" / "b.tar"),
}


@pytest.fixture(params=list(SOURCES))
def source(request: pytest.FixtureRequest) -> Callable[[Path, Path], Path]:
    maker: Callable[[Path, Path], Path] = SOURCES[request.param]
    return maker


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_every_source_checks_and_extracts_the_same_bundle(
    tmp_path: Path, keys: Keys, source: Callable[[Path, Path], Path]
) -> None:
    bundle = make_bundle(tmp_path, keys[0], payload=PAYLOAD)
    path = source(bundle, tmp_path)
    with open_bundle(path, keys[1]) as opened:
        report = opened.check()
    assert (report.manifest.name, report.files) == ("t", len(KINDS) + 1)
    assert report.bytes == sum(e.size for e in read_entries(bundle).files)
    with open_bundle(path, keys[1]) as opened:
        opened.extract(tmp_path / "out")
    assert files_of(tmp_path / "out") == files_of(bundle)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*")}
    assert modes["install.sh"] == 0o755 and modes[layout.MANIFEST] == 0o644
    # Copies, never links into the source: the source can still change, the copy cannot.
    inodes = {p.stat().st_ino for p in bundle.rglob("*") if p.is_file()}
    assert not inodes & {p.stat().st_ino for p in (tmp_path / "out").rglob("*") if p.is_file()}
    verify_dir(tmp_path / "out", keys[1])


def test_the_signature_is_checked_once_per_opening(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, PAYLOAD)
    checked: list[str] = []
    real = verify.verify_bytes

    def counting(public: Path, data: bytes, signature: bytes, what: str) -> None:
        checked.append(what)
        real(public, data, signature, what)

    monkeypatch.setattr(verify, "verify_bytes", counting)
    with open_bundle(delta, keys[1], base=base) as opened:
        opened.check()
        opened.extract(tmp_path / "complete")
    # The base is proven by its manifest's digest, which the delta's signed manifest carries.
    assert checked == [str(delta)]


def test_a_flipped_byte_is_corrupt_content_and_nothing_is_extracted(
    tmp_path: Path, keys: Keys, source: Callable[[Path, Path], Path]
) -> None:
    bundle = make_bundle(tmp_path, keys[0], payload=PAYLOAD)
    target = path_of(bundle, "wheel")
    flip_byte(target)
    path = source(bundle, tmp_path)  # packed after the damage: the archive itself is whole
    with pytest.raises(BundleCorruptError) as caught, open_bundle(path, keys[1]) as opened:
        opened.extract(tmp_path / "dest" / "out")
    assert [p.path for p in caught.value.problems] == [target.relative_to(bundle).as_posix()]
    assert caught.value.problems[0].message.startswith("sha256 ")
    assert caught.value.message == f"{path}: corrupt content: 1 file"
    assert list((tmp_path / "dest").iterdir()) == []


def test_another_key_is_refused_before_any_payload_is_read(
    tmp_path: Path, keys: Keys, source: Callable[[Path, Path], Path]
) -> None:
    path = source(make_bundle(tmp_path, keys[0]), tmp_path)
    with pytest.raises(BundleSignatureError) as caught, open_bundle(path, keys[2]):
        pass
    assert caught.value.message == f"{path}: signed by another key than {keys[2]}"


def test_an_extra_file_in_a_directory_is_refused_at_the_opening(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    (bundle / "blobs" / "stray").write_bytes(b"unsigned")
    with pytest.raises(BundleLayoutError) as caught, open_bundle(bundle, keys[1]):
        pass
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("blobs/stray", "not in the signed manifest")
    ]


def test_an_extra_member_in_an_archive_is_refused_while_streaming(
    tmp_path: Path, keys: Keys
) -> None:
    data = rewrite(packed(make_bundle(tmp_path, keys[0])), after_trust(member("x", body=b"1")))
    (tmp_path / "evil.tar").write_bytes(data)
    with (
        open_bundle(tmp_path / "evil.tar", keys[1]) as opened,
        pytest.raises(BundleLayoutError, match="x is not in the signed manifest"),
    ):
        opened.extract(tmp_path / "dest" / "out")
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_file_changed_after_the_opening_is_caught_while_copied(
    tmp_path: Path, keys: Keys
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    target = path_of(bundle, "model")
    with open_bundle(bundle, keys[1]) as opened:
        flip_byte(target)  # the window between a check and a copy, had there been one
        with pytest.raises(BundleCorruptError) as caught:
            opened.extract(tmp_path / "dest" / "out")
    assert caught.value.problems[0].message.startswith("sha256 ")
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_file_swapped_for_a_link_after_the_opening_is_not_followed(
    tmp_path: Path, keys: Keys
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    target = path_of(bundle, "deb")
    (tmp_path / "elsewhere").write_bytes(target.read_bytes())
    with open_bundle(bundle, keys[1]) as opened:
        target.unlink()
        target.symlink_to(tmp_path / "elsewhere")
        with pytest.raises(BundleCorruptError) as caught:
            opened.check()
    assert caught.value.problems[0].message == "a symbolic link (bundles hold regular files only)"


def test_a_stream_is_read_once_a_directory_any_number_of_times(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    with open_bundle(bundle, keys[1]) as opened:
        assert opened.check().files == opened.check().files
    with open_bundle(as_tar(bundle, tmp_path / "b.tar"), keys[1]) as opened:
        opened.check()
        with pytest.raises(RuntimeError, match="read already"):
            opened.check()


def test_a_compressed_archive_is_read_through(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress(packed(bundle)))
    with open_bundle(tmp_path / "b.tar.gz", keys[1]) as opened:
        assert opened.check().files == len(KINDS)


# --- deltas -------------------------------------------------------------------------------


def test_a_delta_alone_leaves_its_base_files_unchecked(tmp_path: Path, keys: Keys) -> None:
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, PAYLOAD)
    report = verify_dir(delta, keys[1])
    assert (report.files, report.unchecked_from_base) == (1, len(KINDS))
    full = verify_dir(delta, keys[1], base=base)
    assert (full.files, full.unchecked_from_base) == (len(KINDS) + 1, 0)


def test_a_delta_checks_its_base_files_byte_by_byte_in_a_given_base(
    tmp_path: Path, keys: Keys
) -> None:
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, PAYLOAD)
    flip_byte(path_of(base, "file"))
    with pytest.raises(BundleCorruptError) as caught:
        verify_dir(delta, keys[1], base=base)
    assert [p.path for p in caught.value.problems] == [
        path_of(base, "file").relative_to(base).as_posix()
    ]


def test_another_base_is_refused(tmp_path: Path, keys: Keys) -> None:
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, PAYLOAD)
    other = make_bundle(tmp_path, keys[0], name="other", release="9")
    with pytest.raises(BundleCorruptError) as caught:
        verify_dir(delta, keys[1], base=other)
    assert caught.value.message.startswith(
        f"{other} is not the base this delta needs: it needs t 1"
    )
    with pytest.raises(BundleLayoutError, match="--base was given but t 9 is not a delta"):
        verify_dir(other, keys[1], base=base)


def test_an_installed_base_is_linked_and_a_given_one_copied(tmp_path: Path, keys: Keys) -> None:
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, PAYLOAD)
    with open_bundle(delta, keys[1]) as opened:
        opened.extract(tmp_path / "linked", installed_base=lambda _ref: base)
    with open_bundle(delta, keys[1], base=base) as opened:
        opened.extract(tmp_path / "copied")
    for entry in read_entries(delta).files:
        linked, copied = tmp_path / "linked" / entry.path, tmp_path / "copied" / entry.path
        assert linked.read_bytes() == copied.read_bytes()
        source = (base if entry.from_base else delta) / entry.path
        # Only the installer's own release may be shared, and only by a file it lists alike.
        assert linked.samefile(source) == entry.from_base
        assert not copied.samefile(source)
    verify_dir(tmp_path / "linked", keys[1])


def test_an_installed_base_that_lists_a_file_otherwise_is_read_not_linked(
    tmp_path: Path, keys: Keys
) -> None:
    """A delta may claim a base file only as the base lists it; otherwise it is hashed."""
    base = make_bundle(tmp_path, keys[0])
    delta = make_delta(tmp_path, keys[0], base, PAYLOAD)
    claimed = path_of(base, "file").relative_to(base).as_posix()
    manifest = read_entries(delta)
    wrong = [
        e.model_copy(update={"sha256": "0" * 64}) if e.path == claimed else e
        for e in manifest.files
    ]
    (delta / layout.MANIFEST_SIG).unlink()
    (delta / layout.SHA256SUMS_SIG).unlink()
    sign_bundle(delta, manifest.model_copy(update={"files": wrong}), keys[0])
    with (
        open_bundle(delta, keys[1]) as opened,
        pytest.raises(BundleCorruptError) as caught,
    ):
        opened.extract(tmp_path / "out", installed_base=lambda _ref: base)
    assert [p.path for p in caught.value.problems] == [claimed]
    assert not (tmp_path / "out").exists()
