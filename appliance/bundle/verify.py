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

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import filecheck, layout, signing
from appliance.bundle.filecheck import (
    LinkBase,
    create,
    each,
    linkable,
    opener,
    read_all,
    reusable,
)
from appliance.bundle.manifest import BaseRef, FileEntry, Manifest, parse_manifest
from appliance.bundle.signing import verify_bytes
from appliance.bundle.sources import DirSource, OpenBody, Source, open_file, open_source
from appliance.errors import (
    ApplianceError,
    BundleCorruptError,
    BundleLayoutError,
    BundleSignatureError,
    Problem,
)
from appliance.progress import NullProgress, Progress

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
                with create(partial, name) as out:
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
                return filecheck.take(entry, body, into, task.advance)

        reuse = reusable(previous) if into and not self._source.sequential else None
        linked = [] if reuse is None else [e for e in self.expected.values() if linkable(reuse, e)]
        problems = each(take, [(e, opener(reuse, e, into)) for e in linked if reuse], False, jobs)
        others = {path: e for path, e in self.expected.items() if path not in done}
        problems += each(take, self._source.bodies(others), self._source.sequential, jobs)
        rest = [entry for path, entry in sorted(self.expected.items()) if path not in done]
        problems += [Problem(e.path, "missing") for e in rest if not e.from_base]
        if base is not None:
            from_base = [(e, opener(base, e, into)) for e in rest if e.from_base]
            problems += each(take, from_base, False, jobs)
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

    def _find_base(self, installed_base: InstalledBase | None) -> LinkBase | None:
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
            data = read_all(body)
        if data is None or hashlib.sha256(data).hexdigest() != wanted.sha256:
            raise BundleCorruptError(
                f"{directory} is not the base this delta needs: it needs {wanted.name} "
                f"{wanted.release} (manifest sha256 {wanted.sha256})",
                hint="pass the release directory of that exact bundle with --base",
            )
        if self._given_base is not None:
            return LinkBase(directory, frozenset())
        listed = parse_manifest(data, str(directory / layout.MANIFEST)).files
        return LinkBase(directory, frozenset((e.path, e.sha256, e.size) for e in listed))
