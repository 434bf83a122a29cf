"""Open a bundle once, verified: the signature is checked when it opens, every byte as it is read.

``open_bundle`` takes a bundle directory, a packed .tar or a parts index, with the publisher's
key (and, for a delta, where its base is) and returns a ``VerifiedBundle``: the signed manifest,
and two ways to read the files, both hashing each byte on its way: ``check`` keeps nothing,
``extract`` writes a new directory that appears only when every file matched. What is written
is what was hashed, so nothing changed between a check and a copy can slip through.

Layout first (it needs no trust and no hashing), then the signature over the manifest, then
each file's size and digest. Each kind of failure has its own error class, and so its own exit
code: a bad signature, corrupt content, and an unsafe layout call for different responses.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.bundle import layout, signing
from appliance.bundle.manifest import BaseRef, FileEntry, Manifest, parse_manifest
from appliance.bundle.signing import verify_bytes
from appliance.bundle.sources import Body, DirSource, OpenBody, Source, open_file, open_source
from appliance.bundle.store import CHUNK
from appliance.errors import (
    ApplianceError,
    BundleCorruptError,
    BundleLayoutError,
    BundleSignatureError,
    Problem,
)
from appliance.progress import NullProgress, Progress

READ_CHUNK = 4 << 20  # large reads keep the hash fed; see benchmarks/bundle_verify.py

_HINT_CORRUPT = (
    "the bundle was damaged in transit or storage: copy it again from the source and verify "
    "before installing"
)
# Finds a delta's base among the releases this installer staged and verified itself.
InstalledBase = Callable[[BaseRef], Path]


@dataclass(frozen=True)
class VerifyReport:
    manifest: Manifest
    files: int
    bytes: int
    seconds: float
    # A delta's files that the base holds and that were not checked (no base was given).
    unchecked_from_base: int = 0


@contextmanager
def open_bundle(path: Path, pubkey: Path, *, base: Path | None = None) -> Iterator[VerifiedBundle]:
    """Open the bundle at ``path``, checking its signature once, before any payload is read.

    A delta's other files are read from ``base`` when given (a bundle directory, read and hashed
    like the delta's own files), which must be the exact bundle the delta names.
    """
    with open_source(path) as source:
        yield _verified(source, pubkey, base)


def verify_dir(
    bundle: Path,
    pubkey: Path,
    jobs: int = 2,
    progress: Progress | None = None,
    base: Path | None = None,
) -> VerifyReport:
    """Verify a bundle directory: every byte, and a delta's other files in ``base`` if given."""
    return _verified(DirSource(bundle), pubkey, base).check(jobs, progress)


def _verified(source: Source, pubkey: Path, base: Path | None) -> VerifiedBundle:
    trust = source.read_trust()
    verify_bytes(pubkey, trust[layout.MANIFEST], trust[layout.MANIFEST_SIG], source.label)
    _verify_sums_signature(trust, pubkey, source.label)
    manifest = parse_manifest(trust[layout.MANIFEST], f"{source.label}/{layout.MANIFEST}")
    if base is not None and manifest.base is None:
        raise BundleLayoutError(
            f"--base was given but {manifest.name} {manifest.release} is not a delta",
            hint="verify it without --base",
        )
    bundle = VerifiedBundle(source, manifest, trust, base)
    source.admit(bundle.expected)
    return bundle


def _verify_sums_signature(trust: Mapping[str, bytes], pubkey: Path, label: str) -> None:
    """Every signature a bundle carries is checked: SHA256SUMS.sig is what stock tools trust
    (README: ssh-keygen -Y verify, then sha256sum -c), so a release must never carry one that
    does not verify, even though appliance itself trusts the manifest's signature."""
    signature = trust.get(layout.SHA256SUMS_SIG)
    if signature is None:
        if layout.SHA256SUMS in trust:
            raise BundleSignatureError(
                f"{label}: {layout.SHA256SUMS} comes without its signature {layout.SHA256SUMS_SIG}",
                hint="build bundles with `appliance build-bundle --sign-key KEY`, which signs both",
            )
        return
    sums = trust.get(layout.SHA256SUMS, b"")
    signing.verify_bytes(pubkey, sums, signature, f"{label}/{layout.SHA256SUMS}")


def expected_sha256sums(manifest: Manifest, manifest_bytes: bytes) -> bytes:
    lines = {path: entry.sha256 for path, entry in manifest.shipped().items()}
    lines[layout.MANIFEST] = hashlib.sha256(manifest_bytes).hexdigest()
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(lines.items())).encode()


@dataclass(frozen=True)
class _Base:
    directory: Path
    # (path, sha256, size) of the files that may be hard-linked: the installer's own release
    # holds them, verified against its manifest, which lists them as the delta does.
    linkable: frozenset[tuple[str, str, int]]


class VerifiedBundle:
    """A bundle whose signed manifest verified, from which every byte is read hashed.

    Made by ``open_bundle``. A packed bundle is a stream: it can be read (checked or extracted)
    once; a directory any number of times.
    """

    def __init__(
        self,
        source: Source,
        manifest: Manifest,
        trust: Mapping[str, bytes],
        base: Path | None = None,
    ) -> None:
        self.label = source.label
        self.manifest = manifest
        self.trust = dict(trust)  # the trust files exactly as verified
        self.expected = manifest.by_path()  # once: every lookup below is by this table
        self._source = source
        self._given_base = base
        self._read = False

    def check(self, jobs: int = 2, progress: Progress | None = None) -> VerifyReport:
        """Read and hash every file (a delta's other files too, when its base was given)."""
        return self._transfer(None, None, jobs, progress or NullProgress())

    def extract(
        self,
        destination: Path,
        *,
        installed_base: InstalledBase | None = None,
        previous: Path | None = None,
        jobs: int = 2,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Copy the bundle into ``destination`` (new) while hashing every byte.

        A delta comes out complete when its base was given to ``open_bundle`` or is found by
        ``installed_base`` among the releases this installer staged and verified itself: files
        from there are hard-linked, not read again. ``destination`` appears only when everything
        matched; on any failure nothing is left behind. ``previous``: another release this
        installer staged (an upgrade's running one), whose files of the same path and sha256 are
        hard-linked as a delta's base files are, instead of read from a bundle directory again.
        """
        if destination.exists():
            raise BundleLayoutError(
                f"{destination} already exists", hint="unpack into a new directory"
            )
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        try:
            for name, data in self.trust.items():
                with _create(partial, name) as out:
                    out.write(data)
            report = self._transfer(
                partial, installed_base, jobs, progress or NullProgress(), previous
            )
            partial.chmod(0o755)
            partial.rename(destination)
            return report
        except OSError as exc:  # a full disk, a failing medium: said plainly, nothing left
            raise ApplianceError(
                f"{self.label}: copying into {destination} failed: {exc.strerror} ({exc.filename})",
                hint="free space there or fix the medium, then run it again",
            ) from exc
        finally:
            if partial.exists():
                shutil.rmtree(partial)

    def _transfer(
        self,
        into: Path | None,
        installed_base: InstalledBase | None,
        jobs: int,
        progress: Progress,
        previous: Path | None = None,
    ) -> VerifyReport:
        if self._read and self._source.sequential:
            raise RuntimeError(f"{self.label} is a stream and was read already")
        self._read = True
        started = time.monotonic()
        base = self._find_base(installed_base)
        wanted = [e for e in self.expected.values() if base is not None or not e.from_base]
        task = progress.task("verify" if into is None else "copy", sum(e.size for e in wanted))
        done: set[str] = set()

        def take(item: tuple[FileEntry, OpenBody]) -> Problem | None:
            entry, open_body = item
            done.add(entry.path)
            with open_body() as body:
                return _take(entry, body, into, task.advance)

        reuse = _reusable(previous) if into and not self._source.sequential else None
        linked = [] if reuse is None else [e for e in self.expected.values() if _in(reuse, e)]
        problems = _each(take, [(e, _from(reuse, e, into)) for e in linked if reuse], False, jobs)
        others = {path: e for path, e in self.expected.items() if path not in done}
        problems += _each(take, self._source.bodies(others), self._source.sequential, jobs)
        rest = [entry for path, entry in sorted(self.expected.items()) if path not in done]
        problems += [Problem(e.path, "missing") for e in rest if not e.from_base]
        if base is not None:
            from_base = [(e, _from(base, e, into)) for e in rest if e.from_base]
            problems += _each(take, from_base, False, jobs)
        progress.finish(task)
        sums = self.trust.get(layout.SHA256SUMS)
        if sums != expected_sha256sums(self.manifest, self.trust[layout.MANIFEST]):
            problems.append(Problem(layout.SHA256SUMS, "missing or does not match the manifest"))
        if problems:
            raise BundleCorruptError(
                f"{self.label}: corrupt content: {layout.count(problems, 'file')}",
                hint=_HINT_CORRUPT,
                problems=sorted(problems, key=lambda p: p.path),
            )
        return VerifyReport(
            self.manifest,
            len(done),
            sum(self.expected[path].size for path in done),
            time.monotonic() - started,
            unchecked_from_base=len(self.expected) - len(done),
        )

    def _find_base(self, installed_base: InstalledBase | None) -> _Base | None:
        """The delta's base, proven to be the one it names by its manifest's digest (which the
        delta's signed manifest carries, so the base needs no signature check of its own)."""
        wanted = self.manifest.base
        if wanted is None:
            return None
        if self._given_base is not None:
            directory = self._given_base
        elif installed_base is not None:
            directory = installed_base(wanted)
        else:
            return None
        with open_file(directory / layout.MANIFEST) as body:
            data = _read_all(body)
        if data is None or hashlib.sha256(data).hexdigest() != wanted.sha256:
            raise BundleCorruptError(
                f"{directory} is not the base this delta needs: it needs {wanted.name} "
                f"{wanted.release} (manifest sha256 {wanted.sha256})",
                hint="pass the release directory of that exact bundle with --base",
            )
        if self._given_base is not None:
            return _Base(directory, frozenset())
        listed = parse_manifest(data, str(directory / layout.MANIFEST)).files
        return _Base(directory, frozenset((e.path, e.sha256, e.size) for e in listed))


def _reusable(previous: Path | None) -> _Base | None:
    """``previous``'s files that an extract may link (None: no such release here)."""
    if previous is None:
        return None
    try:
        listed = parse_manifest((previous / layout.MANIFEST).read_bytes(), str(previous)).files
    except (OSError, ApplianceError):
        return None  # every file is then read from the bundle
    return _Base(previous, frozenset((e.path, e.sha256, e.size) for e in listed))


def _in(base: _Base, entry: FileEntry) -> bool:
    listed = (entry.path, entry.sha256, entry.size) in base.linkable
    return listed and not entry.from_base and only_ours(base.directory, entry.path)


def _each(
    take: Callable[[tuple[FileEntry, OpenBody]], Problem | None],
    items: Iterable[tuple[FileEntry, OpenBody]],
    sequential: bool,
    jobs: int,
) -> list[Problem]:
    if sequential or jobs <= 1:
        return [p for p in map(take, items) if p is not None]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="bundle") as pool:
        return [p for p in pool.map(take, items) if p is not None]


def _from(base: _Base, entry: FileEntry, into: Path | None) -> OpenBody:
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


def _take(
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
    out = _create(into, entry.path) if into is not None else None
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


def _create(root: Path, relative: str) -> BinaryIO:
    """A new file (never follows or replaces anything); names were checked before."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    return os.fdopen(os.open(path, flags, layout.file_mode(relative)), "wb")


def _read_all(body: Body | str) -> bytes | None:
    if isinstance(body, str) or body.size > layout.TRUST_FILE_LIMIT:
        return None
    buffer = bytearray(body.size)
    view, got = memoryview(buffer), 0
    while got < body.size and (count := body.readinto(view[got:])):
        got += count
    return bytes(buffer[:got])
