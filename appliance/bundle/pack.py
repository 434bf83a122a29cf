"""One-file bundles: pack a bundle directory into a tar stream, and read one back safely.

Packing streams file by file (no temporary copy). The trust files go first, so a reader checks
the signature before it reads a single payload byte. Reading checks every header against the
signed manifest and hashes every member while it streams; unpacking writes only inside a
staging directory, which becomes the destination only when everything verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from appliance.bundle import layout
from appliance.bundle.manifest import Manifest, parse_manifest
from appliance.bundle.parts import INDEX_SUFFIX, JoinedReader, check_parts
from appliance.bundle.signing import verify_bytes
from appliance.bundle.store import CHUNK
from appliance.bundle.verify import (
    VerifyReport,
    check_manifest_paths,
    expected_sha256sums,
    scan_layout,
)
from appliance.errors import BundleCorruptError, BundleLayoutError, BundleSignatureError, Problem

_EPOCH = 315532800


def pack(bundle: Path, out: BinaryIO, advance: Callable[[int], None] | None = None) -> int:
    """Write ``bundle`` as an uncompressed tar to ``out``; returns the number of members.

    Only the trust files and the files the manifest lists are packed, in a fixed order with
    fixed owners and times, so the same bundle always packs to the same bytes.
    """
    scan_layout(bundle)
    data = (bundle / layout.MANIFEST).read_bytes()
    manifest = parse_manifest(data, f"{bundle}/{layout.MANIFEST}")
    check_manifest_paths(manifest, str(bundle))
    names = [name for name in layout.PACK_FIRST if (bundle / name).is_file()]
    names += sorted(manifest.shipped())
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            path = bundle / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o755 if name == layout.INSTALL_SH else 0o644
            info.mtime = _EPOCH
            with path.open("rb") as handle:
                tar.addfile(info, _Counting(handle, advance))
    return len(names)


class _Counting:
    def __init__(self, handle: BinaryIO, advance: Callable[[int], None] | None) -> None:
        self._handle = handle
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self._advance is not None:
            self._advance(len(data))
        return data


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name.removeprefix("./")
    if member.issym():
        return f"symbolic link to {member.linkname}"
    if member.islnk():
        return f"hard link to {member.linkname}"
    if member.ischr() or member.isblk():
        return "device file"
    if not (member.isreg() or member.isdir()):
        return "special file"
    return layout.unsafe_reason(name) if name not in {"", "."} else None


def read_tar(
    source: BinaryIO,
    pubkey: Path,
    label: str,
    extract_to: Path | None = None,
    advance: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify a packed bundle while streaming it; with ``extract_to``, also write its files
    there (a directory the caller owns and removes on failure)."""
    try:
        return _read_tar(source, pubkey, label, extract_to, advance)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleCorruptError(
            f"{label}: not a complete tar archive ({exc})",
            hint="the archive is truncated or damaged: copy it again and verify",
        ) from exc


def _read_tar(
    source: BinaryIO,
    pubkey: Path,
    label: str,
    extract_to: Path | None = None,
    advance: Callable[[int], None] | None = None,
) -> VerifyReport:
    started = time.monotonic()
    trust: dict[str, bytes] = {}
    manifest: Manifest | None = None
    seen: set[str] = set()
    problems: list[Problem] = []
    with tarfile.open(fileobj=source, mode="r|*") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            reason = _member_problem(member)
            if reason is not None:
                raise BundleLayoutError(
                    f"{label}: unsafe layout: {name}: {reason}",
                    hint="do not install this bundle; ask the publisher for a fresh copy",
                    problems=[Problem(name, reason)],
                )
            if member.isdir():
                continue
            if name in seen:
                raise BundleLayoutError(
                    f"{label}: unsafe layout: {name} appears twice",
                    hint="do not install this bundle; ask the publisher for a fresh copy",
                )
            seen.add(name)
            if manifest is None:
                manifest = _read_trust(tar, member, name, trust, pubkey, label)
                if manifest is not None and extract_to is not None:
                    for trust_name, data in trust.items():
                        _write_new(extract_to / trust_name, data)
                continue
            if name in layout.TRUST_FILES:
                data = _read_member(tar, member)
                trust[name] = data
                if extract_to is not None:
                    _write_new(extract_to / name, data)
                continue
            entry = manifest.by_path().get(name)
            if entry is None:
                raise BundleLayoutError(
                    f"{label}: unsafe layout: {name} is not in the signed manifest",
                    hint="do not install this bundle; ask the publisher for a fresh copy",
                    problems=[Problem(name, "not in the signed manifest")],
                )
            if member.size != entry.size:
                problems.append(Problem(name, f"size {member.size}, manifest says {entry.size}"))
                continue
            digest = _stream_member(tar, member, extract_to, advance)
            if digest != entry.sha256:
                problems.append(Problem(name, f"sha256 {digest}, manifest says {entry.sha256}"))
    if manifest is None:
        raise BundleSignatureError(
            f"{label}: no signed manifest at the start of the archive",
            hint="pack bundles with `appliance pack`, which puts the manifest first",
        )
    manifest_bytes = manifest.canonical()
    if trust.get(layout.SHA256SUMS) != expected_sha256sums(manifest, manifest_bytes):
        problems.append(Problem(layout.SHA256SUMS, "missing or does not match the manifest"))
    problems += [Problem(path, "missing") for path in sorted(set(manifest.shipped()) - seen)]
    if problems:
        raise BundleCorruptError(
            f"{label}: corrupt content: {len(problems)} problem(s)",
            hint="the archive was damaged in transit or storage: copy it again and verify",
            problems=problems,
        )
    shipped = manifest.shipped()
    return VerifyReport(
        manifest,
        len(shipped),
        sum(entry.size for entry in shipped.values()),
        time.monotonic() - started,
        unchecked_from_base=len(manifest.by_path()) - len(shipped),
    )


def _read_trust(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    name: str,
    trust: dict[str, bytes],
    pubkey: Path,
    label: str,
) -> Manifest | None:
    """Collect manifest and signature (they come first); verify as soon as both are in."""
    if name not in (layout.MANIFEST, layout.MANIFEST_SIG):
        raise BundleSignatureError(
            f"{label}: {name} comes before the signed manifest",
            hint="pack bundles with `appliance pack`, which puts the manifest first",
        )
    trust[name] = _read_member(tar, member, limit=64 << 20)
    if layout.MANIFEST not in trust or layout.MANIFEST_SIG not in trust:
        return None
    verify_bytes(pubkey, trust[layout.MANIFEST], trust[layout.MANIFEST_SIG], label)
    manifest = parse_manifest(trust[layout.MANIFEST], f"{label}:{layout.MANIFEST}")
    check_manifest_paths(manifest, label)
    return manifest


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int = 64 << 20) -> bytes:
    if member.size > limit:
        raise BundleLayoutError(f"{member.name}: {member.size} bytes is too large for its kind")
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else b""


def _stream_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    extract_to: Path | None,
    advance: Callable[[int], None] | None,
) -> str:
    hasher = hashlib.sha256()
    handle = tar.extractfile(member)
    assert handle is not None  # regular files always have a body
    out = None
    if extract_to is not None:
        out = _open_new(extract_to / member.name.removeprefix("./"))
    try:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            if out is not None:
                out.write(chunk)
            if advance is not None:
                advance(len(chunk))
    finally:
        if out is not None:
            out.close()
    return hasher.hexdigest()


def _open_new(path: Path) -> BinaryIO:
    """Create ``path`` (never follow or replace anything); names were checked before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "wb")


def _write_new(path: Path, data: bytes) -> None:
    with _open_new(path) as out:
        out.write(data)


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


def unpack(archive: Path, destination: Path, pubkey: Path) -> VerifyReport:
    """Verify and extract ``archive`` into ``destination`` (which must not exist), atomically."""
    if destination.exists():
        raise BundleLayoutError(f"{destination} already exists", hint="unpack into a new directory")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.unpack-", dir=destination.parent))
    try:
        with open_archive(archive) as source:
            report = read_tar(source, pubkey, str(archive), extract_to=staging)
        (staging / layout.INSTALL_SH).chmod(0o755) if (
            staging / layout.INSTALL_SH
        ).exists() else None
        staging.rename(destination)
        return report
    finally:
        if staging.exists():
            shutil.rmtree(staging)
