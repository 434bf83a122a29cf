"""Where a bundle's bytes come from: a directory, a packed .tar, or split parts and their index.

A source hands out the trust files first (manifest, signatures, SHA256SUMS: small, read whole)
and then each payload file as a body to stream, checked against a table of what the signed
manifest lists. It never judges content: ``verify.open_bundle`` checks the signature over what
``read_trust`` returned and hashes every body while its bytes are used.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import BinaryIO, Protocol

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry
from appliance.bundle.parts import INDEX_SUFFIX, JoinedReader, check_parts
from appliance.bundle.tarstream import Member, TarReader
from appliance.errors import BundleLayoutError, BundleSignatureError, Problem

_HINT_PACK = "pack bundles with `appliance pack`, which puts the manifest first"
# Directory entries a reader passes over: pack writes none, tar tools one per directory. Before
# the signature is checked a few are allowed; after it, a few per file the manifest lists. Past
# that an archive is only making the reader spin (a compressed run of headers reads fast).
_DIRS_BEFORE_TRUST = 16
_DIRS_PER_FILE = 4


class Body(Protocol):
    """One payload file, open: its size as the source states it, and its bytes."""

    size: int

    def readinto(self, buffer: memoryview, /) -> int: ...


OpenBody = Callable[[], AbstractContextManager[Body | str]]


class Source(Protocol):
    label: str
    # Bodies come in the source's order and once only (a stream), or in any order, in parallel.
    sequential: bool

    def read_trust(self, signed: bool = True) -> dict[str, bytes]: ...
    def admit(self, expected: Mapping[str, FileEntry]) -> None: ...
    def bodies(self, expected: Mapping[str, FileEntry]) -> Iterator[tuple[FileEntry, OpenBody]]: ...


class DirSource:
    """A bundle directory. Its layout is scanned once, before anything is read; each file is
    then opened without following links and must still be a regular file."""

    sequential = False

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise BundleLayoutError(
                f"{root} is not a directory", hint="pass a bundle directory or a packed .tar"
            )
        self.root = root
        self.label = str(root)
        self._found: set[str] = set()

    def read_trust(self, signed: bool = True) -> dict[str, bytes]:
        self._found = layout.scan_layout(self.root)
        for name in (layout.MANIFEST, layout.MANIFEST_SIG)[: 2 if signed else 1]:
            if name not in self._found:
                raise BundleSignatureError(
                    f"{self.root}: {name} is missing: this is not a signed appliance bundle",
                    hint="build bundles with `appliance build-bundle --sign-key KEY`",
                )
        return {
            name: _read_small(self.root / name)
            for name in layout.TRUST_FILES
            if name in self._found
        }

    def admit(self, expected: Mapping[str, FileEntry]) -> None:
        extra = sorted(self._found - set(expected) - set(layout.TRUST_FILES))
        if extra:
            raise BundleLayoutError(
                f"{self.root}: unsafe layout: {layout.count(extra, 'file')} not in the signed "
                "manifest",
                hint=layout.HINT_LAYOUT,
                problems=[Problem(path, "not in the signed manifest") for path in extra],
            )

    def bodies(self, expected: Mapping[str, FileEntry]) -> Iterator[tuple[FileEntry, OpenBody]]:
        for path, entry in sorted(expected.items()):
            if path in self._found:
                yield entry, _opener(self.root / path)


class FileBody:
    def __init__(self, handle: io.FileIO, size: int) -> None:
        self._handle = handle
        self.size = size

    def readinto(self, buffer: memoryview, /) -> int:
        return self._handle.readinto(buffer) or 0


def _opener(path: Path) -> OpenBody:
    return lambda: open_file(path)


@contextmanager
def open_file(path: Path) -> Iterator[Body | str]:
    """``path`` opened for reading if it is (still) a regular file; else why it is not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        yield "missing"
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link put where the file was
            yield "a symbolic link (bundles hold regular files only)"
            return
        yield f"cannot be read: {exc.strerror}"
        return
    with io.FileIO(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            yield "no longer a regular file"
            return
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # read-ahead while we hash
        yield FileBody(handle, info.st_size)


class TarSource:
    """A packed bundle, streamed once: the trust files lead, then every payload member."""

    sequential = True

    def __init__(self, stream: BinaryIO, label: str) -> None:
        self.label = label
        self._tar = TarReader(stream, label)
        self._members = iter(self._tar)
        self._pending: Member | None = None

    def read_trust(self, signed: bool = True) -> dict[str, bytes]:
        trust: dict[str, bytes] = {}
        dirs = 0
        for member in self._members:
            _refuse(member, self.label, trust)
            if member.kind == "dir":
                dirs += 1
                _count_dirs(dirs, _DIRS_BEFORE_TRUST, self.label)
                continue
            if member.name not in layout.TRUST_FILES:
                self._pending = member
                break
            if member.size > layout.TRUST_FILE_LIMIT:
                raise BundleLayoutError(
                    f"{self.label}: {member.name}: {member.size} bytes is too large for its kind"
                )
            trust[member.name] = b"".join(iter(lambda: self._tar.read(1 << 20), b""))
        if layout.MANIFEST not in trust and not signed:
            raise BundleLayoutError(
                f"{self.label}: no manifest at the start of the archive", hint=_HINT_PACK
            )
        if signed and (layout.MANIFEST not in trust or layout.MANIFEST_SIG not in trust):
            if self._pending is not None:
                raise BundleSignatureError(
                    f"{self.label}: {self._pending.name} comes before the signed manifest",
                    hint=_HINT_PACK,
                )
            raise BundleSignatureError(
                f"{self.label}: no signed manifest at the start of the archive", hint=_HINT_PACK
            )
        return trust

    def admit(self, expected: Mapping[str, FileEntry]) -> None:
        """Nothing to do before streaming: each member is checked as it comes."""

    def bodies(self, expected: Mapping[str, FileEntry]) -> Iterator[tuple[FileEntry, OpenBody]]:
        seen: set[str] = set()  # at most the manifest's paths: anything else is refused
        pending, self._pending = self._pending, None
        members = self._members if pending is None else _chain(pending, self._members)
        dirs, allowed = 0, _DIRS_BEFORE_TRUST + _DIRS_PER_FILE * len(expected)
        for member in members:
            _refuse(member, self.label, seen)
            if member.kind == "dir":
                dirs += 1
                _count_dirs(dirs, allowed, self.label)
                continue
            entry = expected.get(member.name)
            if entry is None:
                raise BundleLayoutError(
                    f"{self.label}: unsafe layout: {member.name} is not in the signed manifest",
                    hint=layout.HINT_LAYOUT,
                    problems=[Problem(member.name, "not in the signed manifest")],
                )
            seen.add(member.name)
            yield entry, _MemberBody(self._tar, member.size).opener


class _MemberBody:
    def __init__(self, tar: TarReader, size: int) -> None:
        self._tar = tar
        self.size = size

    def readinto(self, buffer: memoryview, /) -> int:
        data = self._tar.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def opener(self) -> AbstractContextManager[Body | str]:
        return nullcontext(self)


def _count_dirs(count: int, allowed: int, label: str) -> None:
    if count > allowed:
        raise BundleLayoutError(
            f"{label}: unsafe layout: more than {allowed} directory entries",
            hint=layout.HINT_LAYOUT,
        )


def _chain(first: Member, rest: Iterator[Member]) -> Iterator[Member]:
    yield first
    yield from rest


def _refuse(member: Member, label: str, seen: Container[str]) -> None:
    """Links, devices, unsafe or repeated names: refused before a byte of them is used."""
    reason = {
        "symlink": f"symbolic link to {member.linkname}",
        "hardlink": f"hard link to {member.linkname}",
        "device": "device file",
    }.get(member.kind)
    if reason is None and member.kind not in ("file", "dir"):
        reason = "special file"
    if reason is None and member.name not in {"", "."}:
        reason = layout.unsafe_reason(member.name)
    if reason is None and member.kind != "dir" and member.name in seen:
        reason = "appears twice"
    if reason is not None:
        raise BundleLayoutError(
            f"{label}: unsafe layout: {member.name}: {reason}",
            hint="do not install this bundle; ask the publisher for a fresh copy",
            problems=[Problem(member.name, reason)],
        )


def _read_small(path: Path) -> bytes:
    with open_file(path) as body:
        if isinstance(body, str):
            raise BundleLayoutError(f"{path}: {body}", hint=layout.HINT_LAYOUT)
        if body.size > layout.TRUST_FILE_LIMIT:
            raise BundleLayoutError(f"{path}: {body.size} bytes is too large for its kind")
        buffer = bytearray(body.size + 1)
        count = body.readinto(memoryview(buffer))
        return bytes(buffer[:count])


@contextmanager
def open_archive(path: Path) -> Iterator[BinaryIO]:
    """A packed bundle as one stream: a .tar, or the parts a ``.parts.json`` index lists
    (every part checked against the index before the first byte is read)."""
    if path.name.endswith(INDEX_SUFFIX):
        reader = JoinedReader(check_parts(path))
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()
        return
    with path.open("rb") as handle:
        yield handle


@contextmanager
def open_source(path: Path) -> Iterator[Source]:
    """The source ``path`` names: a bundle directory, a packed .tar, or a parts index."""
    if path.is_dir():
        yield DirSource(path)
        return
    with open_archive(path) as stream:
        yield TarSource(stream, str(path))
