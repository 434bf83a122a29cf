"""The strict tar reader: the formats tar tools write, and headers that lie."""

from __future__ import annotations

import bz2
import io
import lzma
import tarfile

import pytest

from appliance.bundle.tarstream import EXTENSION_LIMIT, Member, TarReader
from appliance.errors import BundleCorruptError, BundleLayoutError

LONG = "blobs/" + "d" * 60 + "/" + "n" * 90  # 157 characters: past ustar's 100-byte name field


def tar_of(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def read_all(data: bytes) -> list[tuple[Member, bytes]]:
    reader = TarReader(io.BytesIO(data), "t.tar")
    found = []
    for member in reader:
        body = b"".join(iter(lambda: reader.read(7), b""))
        found.append((member, body))
    return found


@pytest.mark.parametrize(
    "fmt",
    [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT],
    ids=["pax", "gnu", "ustar"],
)
def test_long_names_in_each_format(fmt: int) -> None:
    data = tar_of([(LONG, b"body"), ("./short", b"")], fmt)
    assert [(m.name, m.kind, m.size, body) for m, body in read_all(data)] == [
        (LONG, "file", 4, b"body"),
        ("short", "file", 0, b""),
    ]


def test_unread_bodies_are_skipped() -> None:
    reader = TarReader(io.BytesIO(tar_of([("a", b"x" * 5000), ("b", b"y")])), "t.tar")
    names = [member.name for member in reader]
    assert names == ["a", "b"]


def test_links_and_devices_are_reported_as_what_they_are() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in [("l", tarfile.SYMTYPE), ("h", tarfile.LNKTYPE), ("d", tarfile.CHRTYPE)]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/shadow"
            tar.addfile(info)
    found = [(m.name, m.kind, m.linkname) for m, _ in read_all(out.getvalue())]
    assert found == [
        ("l", "symlink", "/etc/shadow"),
        ("h", "hardlink", "/etc/shadow"),
        ("d", "device", "/etc/shadow"),
    ]


def header(
    name: str, size: int, kind: bytes = tarfile.REGTYPE, fmt: int = tarfile.GNU_FORMAT
) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(fmt)


def test_a_size_past_8_gib_is_read_and_believed_only_as_far_as_bytes_go() -> None:
    data = header("huge", 9 << 30) + b"x" * 1024  # base-256 size field, as GNU tar writes
    reader = TarReader(io.BytesIO(data), "t.tar")
    member = next(iter(reader))
    assert member.size == 9 << 30
    with pytest.raises(BundleCorruptError, match="not a complete tar archive"):
        while reader.read(1 << 20):
            pass


def test_an_extension_header_claiming_too_much_is_refused_before_it_is_read() -> None:
    data = header("././@PaxHeader", 1 << 30, tarfile.XHDTYPE, tarfile.USTAR_FORMAT)
    with pytest.raises(BundleLayoutError) as caught:
        read_all(data)
    assert f"an extended tar header of {1 << 30} bytes at byte 0 (at most {EXTENSION_LIMIT}" in (
        caught.value.message
    )


def test_a_long_name_header_claiming_too_much_is_refused() -> None:
    data = header("././@LongLink", EXTENSION_LIMIT + 1, tarfile.GNUTYPE_LONGNAME)
    with pytest.raises(BundleLayoutError, match="extended tar header"):
        read_all(data)


def test_a_damaged_header_fails_its_checksum() -> None:
    data = bytearray(tar_of([("a", b"1")]))
    data[100] ^= 0x01  # the mode field of the first header
    with pytest.raises(BundleCorruptError, match="the header at byte 0 fails its checksum"):
        read_all(bytes(data))


def test_a_stream_cut_inside_a_body_is_incomplete() -> None:
    data = tar_of([("a", b"1" * 4000)])
    with pytest.raises(BundleCorruptError, match=r"not a complete tar archive \(it ends at byte"):
        read_all(data[:2048])


def test_a_global_header_that_renames_members_is_refused() -> None:
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"path": "evil"}
    ) as tar:
        tar.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    with pytest.raises(BundleLayoutError, match="a global tar header sets member names"):
        read_all(out.getvalue())


@pytest.mark.parametrize("compress", [bz2.compress, lzma.compress], ids=["bzip2", "xz"])
def test_compressed_streams_are_unwrapped(compress: object) -> None:
    data = compress(tar_of([("a", b"hello")]))  # type: ignore[operator]
    assert [(m.name, body) for m, body in read_all(data)] == [("a", b"hello")]


def test_an_empty_stream_has_no_members() -> None:
    assert read_all(b"") == []
