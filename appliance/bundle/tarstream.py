"""A strict, streaming tar reader for packed bundles: constant memory, one pass, no seeking.

Not tarfile: in stream mode tarfile keeps every member's header for the life of the archive
and reads a pax or GNU long-name header whole, however large its header claims it is, so both
time and memory grow with what an archive says about itself. Here nothing outlives its member:
extension headers are refused above ``EXTENSION_LIMIT``, bodies are read in pieces the caller
chooses, and headers are checked (checksum, numbers) before anything is believed. It reads
ustar, pax ('x') and GNU long names ('L', 'K'), as ``appliance pack`` and common tar tools
write them; gzip, bzip2 and xz streams are unwrapped on the way, in bounded pieces, with xz's
dictionary (which the stream itself declares) held under ``XZ_MEMLIMIT``.

Whatever the bytes say, memory stays bounded by the constants here, and every way the input can
be wrong ends in a ``BundleCorruptError`` or ``BundleLayoutError``, never another exception.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from appliance.bundle.layout import HINT_LAYOUT
from appliance.errors import BundleCorruptError, BundleLayoutError

BLOCK = 512
# A pax record or long name this large is no bundle's: real ones are well under 1 KiB.
EXTENSION_LIMIT = 64 << 10
_SKIP = 256 << 10
# Extension headers in front of one member: pack writes at most one pax header; GNU tar at most
# a long name and a long link name. More is no tool's output, only a way to spin the reader.
MAX_EXTENSIONS = 4
# xz -9 needs 65 MiB to decode; a stream that declares more is refused, not obeyed.
XZ_MEMLIMIT = 96 << 20
_COMPRESSED_READ = 64 << 10
_OCTAL = re.compile(rb"[0-7]*")
_DECIMAL = re.compile(r"[0-9]{1,20}")
_HINT_DAMAGED = "the archive is truncated or damaged: copy it again and verify"
_TYPES = {
    b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"1": "hardlink", b"2": "symlink",
    b"3": "device", b"4": "device", b"6": "fifo",
}  # fmt: skip


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Member:
    name: str  # as the header says it, without a leading "./"
    kind: str  # file, dir, hardlink, symlink, device, fifo, or the header's type byte
    size: int  # bytes of body (0 for all but files)
    linkname: str = ""


class TarReader:
    """Iterate the members of a tar stream; ``read`` gives the current member's body."""

    def __init__(self, stream: Readable, label: str) -> None:
        self.label = label
        head = stream.read(BLOCK)
        self._stream = _unwrap(head, stream, label)
        self._remaining = 0  # body bytes of the current member not yet read
        self._padding = 0
        self._offset = 0

    def __iter__(self) -> Iterator[Member]:
        while True:
            self._skip_rest()
            member = self._next_member()
            if member is None:
                return
            yield member

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current member's body; b"" at its end."""
        if self._remaining == 0:
            return b""
        data = self._stream.read(min(size, self._remaining))
        if not data:
            raise self._truncated()
        self._remaining -= len(data)
        self._offset += len(data)
        return data

    def _skip_rest(self) -> None:
        while self._remaining:
            self.read(_SKIP)
        if self._padding:
            self._exact(self._padding)
            self._padding = 0

    def _next_member(self) -> Member | None:
        overrides: dict[str, str] = {}
        extensions = 0
        while True:
            header = self._exact(BLOCK, at_end_ok=True)
            if not header or header == bytes(BLOCK):
                return None  # the end-of-archive marker (or a stream cut at a member boundary)
            self._check_sum(header)
            kind = header[156:157]
            size = self._number(header[124:136])
            if kind in (b"x", b"g", b"L", b"K"):
                extensions += 1
                if extensions > MAX_EXTENSIONS:
                    raise BundleLayoutError(
                        f"{self.label}: unsafe layout: more than {MAX_EXTENSIONS} extended tar "
                        f"headers in front of one member, at byte {self._offset - BLOCK}",
                        hint=HINT_LAYOUT,
                    )
                extension = self._extension(size)
                if kind == b"x":
                    overrides.update(_pax_records(extension, self.label))
                elif kind == b"g":
                    _refuse_global(extension, self.label)
                else:
                    key = "path" if kind == b"L" else "linkpath"
                    overrides[key] = _text(extension.split(b"\0", 1)[0], self.label)
                continue
            name = _text(header[0:100].split(b"\0", 1)[0], self.label)
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
            if prefix:  # POSIX ustar splits long names; GNU tar uses these bytes for times
                name = f"{_text(prefix, self.label)}/{name}"
            if "size" in overrides:
                size = _pax_size(overrides["size"], self.label)
            member_kind = _TYPES.get(kind, kind.decode("latin-1"))
            # Only regular files carry a body (directories and links have none, as in tarfile);
            # other kinds are refused by every reader before their body would matter.
            body = size if member_kind == "file" else 0
            self._remaining, self._padding = body, -body % BLOCK
            return Member(
                name=overrides.get("path", name).removeprefix("./"),
                kind=member_kind,
                size=body,
                linkname=overrides.get("linkpath")
                or _text(header[157:257].split(b"\0", 1)[0], self.label),
            )

    def _extension(self, size: int) -> bytes:
        if size > EXTENSION_LIMIT:
            raise BundleLayoutError(
                f"{self.label}: unsafe layout: an extended tar header of {size} bytes at byte "
                f"{self._offset - BLOCK} (at most {EXTENSION_LIMIT} are read)",
                hint=HINT_LAYOUT,
            )
        body = self._exact(size)
        self._exact(-size % BLOCK)
        return body

    def _exact(self, size: int, at_end_ok: bool = False) -> bytes:
        pieces, wanted = [], size
        while wanted:
            data = self._stream.read(wanted)
            if not data:
                if at_end_ok and wanted == size:
                    return b""
                raise self._truncated()
            pieces.append(data)
            wanted -= len(data)
        self._offset += size
        return b"".join(pieces)

    def _check_sum(self, header: bytes) -> None:
        stored = self._number(header[148:156])
        unsigned = sum(header[:148]) + 8 * 0x20 + sum(header[156:])
        signed = unsigned - 2 * sum(b for b in header[:148] + header[156:] if b > 127)
        if stored not in (unsigned, signed):
            raise BundleCorruptError(
                f"{self.label}: not a tar archive, or a damaged one: the header at byte "
                f"{self._offset - BLOCK} fails its checksum",
                hint=_HINT_DAMAGED,
            )

    def _number(self, field: bytes) -> int:
        if field[0] & 0x80:  # GNU base-256, for sizes past 8 GiB
            if field[0] != 0x80:
                raise self._bad_header("a negative number")
            return int.from_bytes(field[1:], "big")
        digits = field.split(b"\0", 1)[0].strip(b" ")
        # Strictly octal digits: int() would also take a sign, '_' and spaces, and a negative
        # size would make "read the rest of the member" read the rest of the stream.
        if not _OCTAL.fullmatch(digits):
            raise self._bad_header(f"a number that is not octal: {digits!r}")
        return int(digits, 8) if digits else 0

    def _bad_header(self, what: str) -> BundleCorruptError:
        return BundleCorruptError(
            f"{self.label}: not a tar archive, or a damaged one: {what} in the header at byte "
            f"{self._offset - BLOCK}",
            hint=_HINT_DAMAGED,
        )

    def _truncated(self) -> BundleCorruptError:
        return BundleCorruptError(
            f"{self.label}: not a complete tar archive (it ends at byte {self._offset}, inside "
            "a member)",
            hint=_HINT_DAMAGED,
        )


def _pax_records(body: bytes, label: str) -> dict[str, str]:
    """``"<length> <key>=<value>\\n"`` records; only path, linkpath and size matter here."""
    found: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        space = body.find(b" ", offset)
        try:
            length = int(body[offset:space])
        except ValueError:
            length = 0
        record = body[offset : offset + length]
        if space < 0 or length <= space - offset or not record.endswith(b"\n"):
            raise BundleCorruptError(f"{label}: a malformed pax header record", hint=_HINT_DAMAGED)
        key, _, value = record[space - offset + 1 : -1].partition(b"=")
        if key in (b"path", b"linkpath", b"size"):
            found[key.decode()] = _text(value, label)
        offset += length
    return found


def _refuse_global(body: bytes, label: str) -> None:
    """A global pax header that renames or resizes members is no bundle's; others say nothing
    this reader uses (times, owners)."""
    if _pax_records(body, label):
        raise BundleLayoutError(
            f"{label}: unsafe layout: a global tar header sets member names or sizes",
            hint=HINT_LAYOUT,
        )


def _pax_size(value: str, label: str) -> int:
    # ASCII digits, at most 20 (past 2**64): str.isdigit() takes other scripts' digits and
    # superscripts, and int() refuses values past 4300 digits with its own ValueError.
    if not _DECIMAL.fullmatch(value):
        raise BundleCorruptError(
            f"{label}: pax size {value[:40]!r} is not a number", hint=_HINT_DAMAGED
        )
    return int(value)


def _text(raw: bytes, label: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleLayoutError(
            f"{label}: unsafe layout: a member name that is not UTF-8: {raw!r}", hint=HINT_LAYOUT
        ) from None


class _Prefixed:
    """The bytes already read to sniff the format, then the rest of the stream."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


class _Gzip:
    """zlib's gzip decoder with the interface bz2's and lzma's decompressors share."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(wbits=31)

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    @property
    def unused_data(self) -> bytes:
        return self._zlib.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._zlib.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._zlib.decompress(self._zlib.unconsumed_tail + data, max_length)


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


class _Decompressed:
    """The decompressed bytes of ``raw``, at most ``size`` per read: gzip.GzipFile and friends
    would do, but lzma.LZMAFile has no memory limit and their errors are not ours."""

    def __init__(self, raw: Readable, make: Callable[[], _Decompressor], label: str) -> None:
        self._raw = raw
        self._make = make
        self._decoder = make()
        self._label = label
        self._started = False

    def read(self, size: int = -1, /) -> bytes:
        wanted = size if 0 <= size <= _SKIP else _SKIP
        while True:
            if self._decoder.eof:  # concatenated streams, as `cat a.gz b.gz` makes
                data = self._decoder.unused_data or self._raw.read(_COMPRESSED_READ)
                if not data:
                    return b""
                self._decoder = self._make()
            elif self._decoder.needs_input:
                data = self._raw.read(_COMPRESSED_READ)
                if not data:
                    raise BundleCorruptError(
                        f"{self._label}: the compressed stream is truncated", hint=_HINT_DAMAGED
                    )
            else:
                data = b""
            try:
                out = self._decoder.decompress(data, wanted)
            except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
                raise BundleCorruptError(
                    f"{self._label}: the compressed stream cannot be read: {exc}",
                    hint=_HINT_DAMAGED,
                ) from None
            if out:
                return out


def _gzip() -> _Decompressor:
    return _Gzip()


def _xz() -> _Decompressor:
    decoder: _Decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
    return decoder


def _unwrap(head: bytes, stream: Readable, label: str) -> Readable:
    """The tar stream inside: as read, or decompressed on the way when it is compressed."""
    joined = _Prefixed(head, stream)
    if head.startswith(b"\x1f\x8b"):
        return _Decompressed(joined, _gzip, label)
    if head.startswith(b"BZh"):
        return _Decompressed(joined, bz2.BZ2Decompressor, label)
    if head.startswith(b"\xfd7zXZ\x00"):
        return _Decompressed(joined, _xz, label)
    return joined
