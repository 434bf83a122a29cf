"""One file of a bundle, read once: hashed on its way, written where it is copied, or shared by a
hard link with a release this installer staged and verified itself.

verify.py decides which files a check or an extract reads and from where (the bundle, a delta's
base, the running release); each file's bytes pass through ``take`` here, so what is written is
what was hashed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry, parse_manifest
from appliance.bundle.sources import Body, OpenBody, open_file
from appliance.bundle.store import CHUNK
from appliance.errors import ApplianceError, Problem

READ_CHUNK = 4 << 20  # large reads keep the hash fed; see benchmarks/bundle_verify.py


@dataclass(frozen=True)
class LinkBase:
    directory: Path
    # (path, sha256, size) of the files that may be hard-linked: the installer's own release
    # holds them, verified against its manifest, which lists them as the delta does.
    linkable: frozenset[tuple[str, str, int]]


def reusable(previous: Path | None) -> LinkBase | None:
    """``previous``'s files that an extract may link (None: no such release here)."""
    if previous is None:
        return None
    try:
        listed = parse_manifest((previous / layout.MANIFEST).read_bytes(), str(previous)).files
    except (OSError, ApplianceError):
        return None  # every file is then read from the bundle
    return LinkBase(previous, frozenset((e.path, e.sha256, e.size) for e in listed))


def linkable(base: LinkBase, entry: FileEntry) -> bool:
    listed = (entry.path, entry.sha256, entry.size) in base.linkable
    return listed and not entry.from_base and only_ours(base.directory, entry.path)


def each(
    take: Callable[[tuple[FileEntry, OpenBody]], Problem | None],
    items: Iterable[tuple[FileEntry, OpenBody]],
    sequential: bool,
    jobs: int,
) -> list[Problem]:
    if sequential or jobs <= 1:
        return [p for p in map(take, items) if p is not None]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="bundle") as pool:
        return [p for p in pool.map(take, items) if p is not None]


def opener(base: LinkBase, entry: FileEntry, into: Path | None) -> OpenBody:
    source = base.directory / entry.path
    listed = (entry.path, entry.sha256, entry.size) in base.linkable
    if into is not None and listed and only_ours(base.directory, entry.path):
        return lambda: _linked(source, into / entry.path)
    return lambda: _open_in_base(source, base.directory)


def only_ours(directory: Path, relative: str) -> bool:
    """Whether ``directory/relative`` and every directory on the way down from ``directory``'s
    parent belong to this process's user and nobody else may write them: only then may a
    release share the file's inode. A file someone else can still change is copied and hashed
    instead, so a release never changes after it was staged."""
    uid = os.geteuid()
    path = directory.parent
    for part in ("", directory.name, *relative.split("/")):
        path = path / part if part else path
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if info.st_uid != uid or info.st_mode & 0o022 or stat.S_ISLNK(info.st_mode):
            return False
    return stat.S_ISREG(info.st_mode)


@contextmanager
def _open_in_base(path: Path, directory: Path) -> Iterator[Body | str]:
    with open_file(path) as body:
        yield f"missing (the base {directory} does not hold it)" if body == "missing" else body


@contextmanager
def _linked(source: Path, target: Path) -> Iterator[Body | str]:
    """A file of the installer's own verified release, shared by a hard link (no second copy,
    nothing read again); where links cannot be made, copied and hashed like any other file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except FileNotFoundError:
        yield "missing (the base release does not hold it)"
        return
    except OSError as exc:
        if exc.errno not in {errno.EXDEV, errno.EPERM, errno.EMLINK}:
            raise
        with open_file(source) as body:
            yield body
        return
    yield _Linked(target.stat().st_size)


class _Linked:
    """Stands for a file already in place: nothing to read."""

    def __init__(self, size: int) -> None:
        self.size = size

    def readinto(self, buffer: memoryview, /) -> int:
        return 0


_buffers = threading.local()


def take(
    entry: FileEntry, body: Body | str, into: Path | None, advance: Callable[[int], None]
) -> Problem | None:
    """Read ``body`` once, hashing it, into ``into`` when given: what is written is what was
    hashed. Returns what is wrong with it, if anything."""
    if isinstance(body, str):
        return Problem(entry.path, body)
    if body.size != entry.size:
        return Problem(entry.path, f"size {body.size}, manifest says {entry.size}")
    if isinstance(body, _Linked):
        advance(entry.size)
        return None
    # Writes of 256 KiB, reads of 4 MiB: see store.CHUNK and benchmarks/bundle_verify.py.
    chunk = CHUNK if into is not None else READ_CHUNK
    buffer: memoryview | None = getattr(_buffers, "view", None)
    if buffer is None or len(buffer) != chunk:
        buffer = _buffers.view = memoryview(bytearray(chunk))
    hasher = hashlib.sha256()
    left = entry.size
    out = create(into, entry.path) if into is not None else None
    try:
        while left:
            count = body.readinto(buffer[: min(chunk, left)])
            if not count:
                return Problem(entry.path, f"size {entry.size - left}, manifest says {entry.size}")
            hasher.update(buffer[:count])
            if out is not None:
                out.write(buffer[:count])
            left -= count
            advance(count)
    finally:
        if out is not None:
            out.close()
    digest = hasher.hexdigest()
    if digest != entry.sha256:
        return Problem(entry.path, f"sha256 {digest}, manifest says {entry.sha256}")
    return None


def create(root: Path, relative: str) -> BinaryIO:
    """A new file (never follows or replaces anything); names were checked before."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    return os.fdopen(os.open(path, flags, layout.file_mode(relative)), "wb")


def read_all(body: Body | str) -> bytes | None:
    if isinstance(body, str) or body.size > layout.TRUST_FILE_LIMIT:
        return None
    buffer = bytearray(body.size)
    view, got = memoryview(buffer), 0
    while got < body.size and (count := body.readinto(view[got:])):
        got += count
    return bytes(buffer[:got])
