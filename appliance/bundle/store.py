"""A content-addressed blob store: every payload once, as blobs/sha256/<hex>.

Bytes are hashed as they are written, never re-read to hash them. A blob appears under its
final name only after its digest is known (and matched, when one was expected), by an atomic
rename: a crash leaves at most a temporary file, never a wrong blob.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.bundle.layout import BLOBS
from appliance.errors import ChecksumMismatchError

# Writes of 1 MiB buffers ran 10x slower than 256 KiB ones on the CI machines (measured in
# benchmarks/bundle_build.py); reads are not affected.
CHUNK = 256 << 10


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


class BlobWriter:
    """Receives bytes, hashes them on the way to disk, and files them under their digest."""

    def __init__(self, store: BlobStore, handle: BinaryIO, temp: Path) -> None:
        self._store = store
        self._handle = handle
        self._temp = temp
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._hash.update(data)
        self.size += len(data)

    def commit(self, expected: str | None = None, what: str = "blob") -> Blob:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        actual = self._hash.hexdigest()
        if expected is not None and actual != expected:
            self._temp.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"{what}: sha256 mismatch: expected {expected}, got {actual}",
                hint="the upstream file changed or the download was corrupted; if the change "
                "is intended, pin the new digest in the spec",
            )
        final = self._store.path(actual)
        if final.exists():
            self._temp.unlink()
        else:
            # Read-only: blobs are shared by hard links between cache and bundles.
            self._temp.chmod(0o444)
            self._temp.replace(final)
        return Blob(actual, self.size)


class BlobStore:
    def __init__(self, root: Path) -> None:
        """``root`` is the directory that holds ``blobs/sha256`` (a bundle or a cache)."""
        self.root = root
        self.blobs = root / BLOBS
        self.blobs.mkdir(parents=True, exist_ok=True)

    def path(self, hexdigest: str) -> Path:
        return self.blobs / hexdigest

    def has(self, hexdigest: str) -> bool:
        return self.path(hexdigest).is_file()

    def size(self, hexdigest: str) -> int:
        return self.path(hexdigest).stat().st_size

    @contextlib.contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        """Yield a writer; a blob that is not committed leaves nothing behind."""
        fd, name = tempfile.mkstemp(prefix=".incoming-", dir=self.blobs)
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield BlobWriter(self, handle, temp)
        finally:
            temp.unlink(missing_ok=True)

    def add_file(self, source: Path, expected: str | None = None, what: str = "file") -> Blob:
        """Copy ``source`` in, hashing while copying."""
        with source.open("rb") as handle, self.writer() as writer:
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while count := handle.readinto(buffer):
                writer.write(view[:count])
            return writer.commit(expected, what)

    def adopt(self, source: Path, expected: str | None = None, what: str = "file") -> Blob:
        """Move ``source`` in, hashing it by reading: no second copy on disk while it is filed.
        ``source`` must be on the store's file system (a download into ``self.root``)."""
        with source.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256")
            os.fsync(handle.fileno())
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            source.unlink()
            raise ChecksumMismatchError(
                f"{what}: sha256 mismatch: expected {expected}, got {actual}",
                hint="the upstream file changed or the download was corrupted; if the change "
                "is intended, pin the new digest in the spec",
            )
        final = self.path(actual)
        size = source.stat().st_size
        if final.exists():
            source.unlink()
        else:
            source.chmod(0o444)
            source.replace(final)
        return Blob(actual, size)

    def add_bytes(self, data: bytes) -> Blob:
        with self.writer() as writer:
            writer.write(data)
            return writer.commit()

    def link_from(self, other: BlobStore, hexdigest: str) -> None:
        """Take a blob another store holds: a hard link when both share a filesystem (no extra
        disk), else a copy."""
        target = self.path(hexdigest)
        if target.exists():
            return
        source = other.path(hexdigest)
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in {errno.EXDEV, errno.EPERM, errno.EMLINK}:
                raise
            temp = target.with_name(f".incoming-{hexdigest}")
            shutil.copyfile(source, temp)
            temp.replace(target)
