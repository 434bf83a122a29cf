"""Split packing for removable media: parts round-trip; a missing or corrupt part is named
before anything is joined or extracted."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from appliance.bundle.inspect import read_manifest
from appliance.bundle.pack import open_archive, pack, unpack
from appliance.bundle.parts import PartWriter, parse_size
from appliance.bundle.signing import keygen
from appliance.bundle.verify import verify_dir
from appliance.errors import BundleCorruptError
from tests.fixtures.bundles import make_bundle

MIB = 1 << 20


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path]:
    keygen(tmp_path / "key", "parts")
    # Enough payload to need several parts of 1 MiB.
    return make_bundle(
        tmp_path, tmp_path / "key", payload=os.urandom(3 * MIB)
    ), tmp_path / "key.pub"


def split(bundle: Path, out: Path, size: int = MIB) -> tuple[Path, PartWriter]:
    writer = PartWriter(out, size)
    pack(bundle, writer)  # type: ignore[arg-type]
    return writer.close(), writer


def test_parts_round_trip_and_match_the_single_archive(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    source, pubkey = bundle
    index, writer = split(source, tmp_path / "media" / "b.tar")
    assert len(writer.parts) == 4
    assert all(part.size == MIB for part in writer.parts[:-1])
    whole = io.BytesIO()
    pack(source, whole)
    joined = b"".join((index.parent / part.name).read_bytes() for part in writer.parts)
    assert joined == whole.getvalue()
    unpack(index, tmp_path / "restored", pubkey)
    verify_dir(tmp_path / "restored", pubkey)


def test_flipped_byte_in_one_part_is_named_before_joining(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    source, pubkey = bundle
    index, writer = split(source, tmp_path / "media" / "b.tar")
    damaged = index.parent / writer.parts[2].name
    data = bytearray(damaged.read_bytes())
    data[1234] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(BundleCorruptError) as caught:
        unpack(index, tmp_path / "dest" / "b", pubkey)
    assert caught.value.message == f"{index}: 1 of 4 parts missing or corrupt"
    assert [p.path for p in caught.value.problems] == [writer.parts[2].name]
    assert caught.value.problems[0].message.startswith("sha256 ")
    assert list((tmp_path / "dest").iterdir()) == []


def test_missing_part_is_named(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = bundle
    index, writer = split(source, tmp_path / "media" / "b.tar")
    (index.parent / writer.parts[-1].name).unlink()
    with pytest.raises(BundleCorruptError) as caught, open_archive(index):
        pass
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (writer.parts[-1].name, "missing")
    ]


@pytest.mark.parametrize(
    ("text", "size"), [("4G", 4 << 30), ("700M", 700 * MIB), ("1.5GiB", 3 << 29)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["4X", "", "10K"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a size|is below 1M"):
        parse_size(text)


def test_inspect_reads_the_manifest_through_the_index(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = bundle
    index, _ = split(source, tmp_path / "media" / "b.tar")
    assert read_manifest(index).name == "t"
