"""Hostile archives: whatever a packed bundle's headers claim, reading it takes memory bounded
by a constant and ends in an ApplianceError, before the signature is checked and after it.

A table of the known classes (sizes that lie, pax and GNU extensions, special members, runs of
headers, compressed input and bombs), then properties over generated headers, generated
compressed streams and random damage to a real signed archive.
"""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.bundle import layout
from appliance.bundle.tarstream import EXTENSION_LIMIT, MAX_EXTENSIONS, TarReader
from appliance.bundle.verify import open_bundle
from appliance.errors import (
    ApplianceError,
    BundleCorruptError,
    BundleLayoutError,
    BundleSignatureError,
)
from tests.fixtures.bundles import make_bundle, packed
from tests.fixtures.hostile import end_of_archive, examples, pax, peak_bytes, raw_header

# What reading any hostile archive here may allocate: far below what the headers claim (GiB),
# above the reader's own buffers (256 KiB pieces, 64 KiB extension headers).
MEMORY_BOUND = 4 << 20


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path, Path]) -> bytes:
    """A real signed bundle, packed."""
    return packed(make_bundle(tmp_path_factory.mktemp("hostile"), keys[0]))


def trust_prefix(data: bytes) -> bytes:
    """The packed bundle up to its first payload member: the trust files, signed and intact."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    return data[: members[len(layout.PACK_FIRST)].offset]


def octal(number: int) -> bytes:
    return b"%011o" % number


def xz_claiming_a_huge_dictionary() -> bytes:
    """An xz stream whose block header asks for a 1.5 GiB dictionary (CRC fixed up): a decoder
    without a memory limit would allocate it before reading a byte of data."""
    data = bytearray(lzma.compress(b"x" * 1000, preset=0))
    start = 12  # the stream header
    size = (data[start] + 1) * 4
    props = data.index(b"\x21\x01", start, start + size) + 2  # LZMA2 filter, 1 property byte
    data[props] = 38  # dictionary size code: 1.5 GiB
    crc = zlib.crc32(bytes(data[start : start + size - 4]))
    data[start + size - 4 : start + size] = crc.to_bytes(4, "little")
    return bytes(data)


TEBIBYTE = b"\x80" + (1 << 40).to_bytes(11, "big")  # a base-256 size field, as GNU tar writes
BYTES = bytes(range(256))


def dir_header(index: int) -> bytes:
    return raw_header(f"d{index}/".encode(), kind=b"5")


# name -> (archive after the trust files, or None for "the whole archive", error, text)
Case = tuple[Callable[[bytes], bytes], type[ApplianceError], str]


def alone(body: bytes) -> Callable[[bytes], bytes]:
    """The hostile bytes as the whole archive: refused before any signature exists."""
    return lambda _signed: body


def after_trust(body: bytes) -> Callable[[bytes], bytes]:
    """The hostile bytes right after the signed trust files: refused after the signature."""
    return lambda signed: trust_prefix(signed) + body + end_of_archive()


HEADERS: dict[str, Case] = {
    "negative-octal-size": (
        alone(raw_header(size=b"-0000000001") + b"x" * 4096),
        BundleCorruptError,
        "not octal",
    ),
    "octal-size-with-underscore": (alone(raw_header(size=b"1_000")), BundleCorruptError, "octal"),
    "octal-size-with-plus": (alone(raw_header(size=b"+7")), BundleCorruptError, "octal"),
    "negative-base-256-size": (
        alone(raw_header(size=b"\xff" * 12)),
        BundleCorruptError,
        "a negative number",
    ),
    "checksum-not-octal": (
        alone(raw_header(checksum=b"9999999\0")),
        BundleCorruptError,
        "not octal",
    ),
    "garbage-block": (alone(bytes(range(256)) * 2), BundleCorruptError, "not a tar archive"),
    "pax-size-of-60000-digits": (
        alone(pax({b"size": b"9" * 60000}) + raw_header()),
        BundleCorruptError,
        "is not a number",
    ),
    "pax-size-in-arabic-indic-digits": (
        alone(pax({b"size": "\u0663".encode()}) + raw_header()),
        BundleCorruptError,
        "is not a number",
    ),
    "pax-size-superscript": (
        alone(pax({b"size": "\u00b2".encode()}) + raw_header()),
        BundleCorruptError,
        "is not a number",
    ),
    "pax-record-length-lies": (
        alone(
            raw_header(b"././@PaxHeader", octal(20), b"x")
            + b"99999 path=x\n".ljust(512, b"\0")
            + raw_header()
        ),
        BundleCorruptError,
        "malformed pax header record",
    ),
    "pax-header-of-a-gibibyte": (
        alone(raw_header(b"././@PaxHeader", octal(1 << 30), b"x")),
        BundleLayoutError,
        "extended tar header",
    ),
    "chain-of-pax-headers": (
        alone(pax({b"comment": b"x"}) * (MAX_EXTENSIONS + 50) + raw_header()),
        BundleLayoutError,
        "extended tar headers in front of one member",
    ),
    "gnu-long-name-past-the-limit": (
        alone(raw_header(b"././@LongLink", octal(EXTENSION_LIMIT + 1), b"L")),
        BundleLayoutError,
        "extended tar header",
    ),
    "gnu-long-name-with-an-escape-sequence": (
        after_trust(
            raw_header(b"././@LongLink", octal(20), b"L")
            + b"blobs/\x1b[2Jevil\0".ljust(512, b"\0")
            + raw_header(b"ignored", octal(1))
            + b"x".ljust(512, b"\0")
        ),
        BundleLayoutError,
        "control or format character U+001B",
    ),
    "gnu-long-name-not-utf8": (
        alone(raw_header(b"././@LongLink", octal(4), b"L") + b"\xff\xfe\xfd\0".ljust(512, b"\0")),
        BundleLayoutError,
        "not UTF-8",
    ),
    "pax-path-with-a-component-of-300-bytes": (
        after_trust(pax({b"path": b"blobs/" + b"n" * 300}) + raw_header(size=octal(0))),
        BundleLayoutError,
        "longer than 255 bytes",
    ),
    "pax-path-with-bidi-override": (
        after_trust(pax({b"path": "blobs/\u202eexe.txt".encode()}) + raw_header(size=octal(0))),
        BundleLayoutError,
        "U+202E",
    ),
    "sparse-member": (alone(raw_header(kind=b"S", size=octal(10))), BundleLayoutError, "special"),
    "fifo-member": (after_trust(raw_header(kind=b"6")), BundleLayoutError, "special file"),
    "block-device-member": (after_trust(raw_header(kind=b"4")), BundleLayoutError, "device file"),
    "directory-entries-before-the-manifest": (
        alone(b"".join(dir_header(i) for i in range(5000))),
        BundleLayoutError,
        "directory entries",
    ),
    "directory-entries-after-the-manifest": (
        after_trust(b"".join(dir_header(i) for i in range(5000))),
        BundleLayoutError,
        "directory entries",
    ),
    "manifest-claiming-a-tebibyte": (
        alone(raw_header(b"manifest.json", TEBIBYTE)),
        BundleLayoutError,
        "too large for its kind",
    ),
    "payload-claiming-more-than-is-there": (
        after_trust(
            raw_header(b"blobs/sha256/" + b"0" * 64, b"\x80" + (1 << 40).to_bytes(11, "big"))
        ),
        BundleLayoutError,
        "not in the signed manifest",
    ),
    "member-before-the-manifest": (
        alone(raw_header(b"blobs/x", octal(1)) + b"x".ljust(512, b"\0")),
        BundleSignatureError,
        "comes before the signed manifest",
    ),
    # Compressed input: damage, truncation, bombs and a dictionary too large to allocate.
    "gzip-truncated": (
        alone(
            gzip.compress(raw_header(b"manifest.json", octal(204800)) + bytes(range(256)) * 800)[
                :-100
            ]
        ),
        BundleCorruptError,
        "truncated",
    ),
    "gzip-damaged": (
        alone(gzip.compress(b"\0" * 1000)[:10] + b"\xff" * 64),
        BundleCorruptError,
        "cannot be read",
    ),
    "bzip2-damaged": (alone(b"BZh9" + b"\x31\x41" * 300), BundleCorruptError, "cannot be read"),
    "xz-damaged": (alone(lzma.compress(b"x" * 100)[:20] + b"\0" * 80), BundleCorruptError, "xz"),
    "xz-asking-for-a-huge-dictionary": (
        alone(xz_claiming_a_huge_dictionary()),
        BundleCorruptError,
        "cannot be read",
    ),
    "gzip-bomb-of-zeros": (
        alone(gzip.compress(bytes(64 << 20), compresslevel=9)),
        BundleSignatureError,
        "no signed manifest",
    ),
    "gzip-bomb-of-directory-headers": (
        alone(gzip.compress(b"".join(dir_header(i % 10) for i in range(100_000)))),
        BundleLayoutError,
        "directory entries",
    ),
    "xz-bomb-of-pax-headers": (
        alone(lzma.compress(pax({b"comment": b"y" * 60000}) * 2000, preset=0)),
        BundleLayoutError,
        "extended tar headers",
    ),
}
HEADERS["xz-damaged"] = (HEADERS["xz-damaged"][0], BundleCorruptError, "compressed stream")


def open_and_check(archive: Path, pubkey: Path) -> None:
    with open_bundle(archive, pubkey) as bundle:
        bundle.check()


@pytest.mark.parametrize(("make", "error", "text"), HEADERS.values(), ids=HEADERS.keys())
def test_a_hostile_archive_is_refused_in_bounded_memory(
    tmp_path: Path,
    keys: tuple[Path, Path, Path],
    signed: bytes,
    make: Callable[[bytes], bytes],
    error: type[ApplianceError],
    text: str,
) -> None:
    archive = tmp_path / "hostile.tar"
    archive.write_bytes(make(signed))
    raised, peak = peak_bytes(lambda: open_and_check(archive, keys[1]))
    assert isinstance(raised, error), repr(raised)
    assert text in raised.message
    assert peak < MEMORY_BOUND, f"{peak} bytes"


# --- properties ----------------------------------------------------------------------------

FIELD = st.binary(max_size=16)
KINDS = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"S", b"\0"]


@examples(300)
@given(
    name=st.binary(max_size=100),
    size=st.one_of(FIELD, st.binary(min_size=12, max_size=12)),
    kind=st.sampled_from(
        [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"S", b"\0"]
    )
    | st.binary(min_size=1, max_size=1),
    linkname=st.binary(max_size=100),
    magic=st.sampled_from([b"ustar\x0000", b"ustar  \0", b""]),
    prefix=st.binary(max_size=155),
    body=st.binary(max_size=2048),
    headers=st.integers(min_value=1, max_value=3),
)
def test_any_header_is_read_or_refused_with_an_appliance_error(
    name: bytes,
    size: bytes,
    kind: bytes,
    linkname: bytes,
    magic: bytes,
    prefix: bytes,
    body: bytes,
    headers: int,
) -> None:
    block = raw_header(name, size, kind, linkname, magic, prefix)
    reader = TarReader(io.BytesIO((block + body) * headers), "generated.tar")
    try:
        for member in reader:
            assert member.size >= 0
            while reader.read(1 << 16):
                pass
    except (BundleCorruptError, BundleLayoutError):
        pass


@examples(200)
@given(
    magic=st.sampled_from([b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"]),
    rest=st.binary(max_size=4096),
)
def test_any_compressed_stream_is_read_or_refused_with_an_appliance_error(
    magic: bytes, rest: bytes
) -> None:
    reader = TarReader(io.BytesIO(magic + rest), "generated.tar.gz")
    try:
        for _member in reader:
            while reader.read(1 << 16):
                pass
    except (BundleCorruptError, BundleLayoutError):
        pass


@examples(200)
@given(data=st.data())
def test_any_damage_to_a_signed_archive_is_refused_or_harmless(
    tmp_path: Path,
    keys: tuple[Path, Path, Path],
    signed: bytes,
    data: st.DataObject,
) -> None:
    """Bytes overwritten anywhere (headers, trust files, payload), or the archive cut short:
    either every file still matches the signed manifest (the change hit padding), or the
    archive is refused with an ApplianceError; never another exception."""
    damaged = bytearray(signed)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="changes")):
        offset = data.draw(st.integers(min_value=0, max_value=len(signed) - 1), label="offset")
        damaged[offset] = data.draw(st.integers(min_value=0, max_value=255), label="byte")
    cut = data.draw(st.integers(min_value=len(signed) // 2, max_value=len(signed)), label="cut")
    archive = tmp_path / "b.tar"
    archive.write_bytes(bytes(damaged[:cut]))
    try:
        open_and_check(archive, keys[1])
    except ApplianceError as error:
        assert error.exit_code in {10, 11, 12}
