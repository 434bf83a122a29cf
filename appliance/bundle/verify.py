"""Check a bundle offline: layout, then signature, then every byte.

Layout first (it needs no trust and no hashing), then the signature over the manifest, then
each file's size and digest. Each kind of failure has its own error class, and so its own exit
code: a bad signature, corrupt content, and an unsafe layout call for different responses.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry, Manifest, parse_manifest
from appliance.bundle.signing import verify_bytes
from appliance.errors import BundleCorruptError, BundleLayoutError, BundleSignatureError, Problem
from appliance.progress import NullProgress, Progress
from appliance.spec.checks import NAME_RE

READ_CHUNK = 4 << 20  # large reads keep the hash fed; see benchmarks/bundle_verify.py

_HINT_CORRUPT = (
    "the bundle was damaged in transit or storage: copy it again from the source and verify "
    "before installing"
)
_HINT_LAYOUT = (
    "a bundle holds only the files its signed manifest lists; do not install it, and ask the "
    "publisher for a fresh copy"
)


@dataclass(frozen=True)
class VerifyReport:
    manifest: Manifest
    files: int
    bytes: int
    seconds: float
    # A delta's files that the base holds and that were not checked (no base was given).
    unchecked_from_base: int = 0


def sha256_file(path: Path, advance: Callable[[int], None] | None = None) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        # Ask for aggressive read-ahead: the disk then works while this thread hashes.
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while count := handle.readinto(buffer):
            hasher.update(view[:count])
            size += count
            if advance is not None:
                advance(count)
    return hasher.hexdigest(), size


def scan_layout(bundle: Path) -> set[str]:
    """Every regular file under ``bundle`` (relative paths); refuses links and special files."""
    found: set[str] = set()
    problems: list[Problem] = []
    stack = [bundle]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                path = Path(entry.path)
                relative = path.relative_to(bundle).as_posix()
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    target = str(path.readlink())
                    resolved = (path.parent / target).resolve()
                    escapes = not resolved.is_relative_to(bundle.resolve())
                    problems.append(
                        Problem(
                            relative,
                            f"symbolic link to {target}"
                            + (" escapes the bundle" if escapes else "; bundles hold no links"),
                        )
                    )
                elif stat.S_ISDIR(mode):
                    stack.append(path)
                elif stat.S_ISREG(mode):
                    found.add(relative)
                else:
                    kind = (
                        "device file"
                        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                        else "special file"
                    )
                    problems.append(Problem(relative, f"{kind} (bundles hold regular files only)"))
    if problems:
        raise BundleLayoutError(
            f"{bundle}: unsafe layout: {_count(problems, 'entry')}",
            hint=_HINT_LAYOUT,
            problems=sorted(problems, key=lambda p: p.path),
        )
    return found


def check_signature(bundle: Path, pubkey: Path) -> Manifest:
    for name in (layout.MANIFEST, layout.MANIFEST_SIG):
        if not (bundle / name).is_file():
            raise BundleSignatureError(
                f"{bundle}: {name} is missing: this is not a signed appliance bundle",
                hint="build bundles with `appliance build-bundle --sign-key KEY`",
            )
    data = (bundle / layout.MANIFEST).read_bytes()
    verify_bytes(pubkey, data, (bundle / layout.MANIFEST_SIG).read_bytes(), str(bundle))
    manifest = parse_manifest(data, f"{bundle}/{layout.MANIFEST}")
    check_manifest_paths(manifest, str(bundle))
    return manifest


# Kinds whose ``name`` becomes a path on the hosts (models: relative inside the model's
# directory; the others: a file name in a directory of their own).
_NAMED_ON_HOSTS = {"model": True, "wheel": False, "file": False, "deb": False}


def _unsafe_name(kind: str, name: str | None) -> str | None:
    if name is None or kind not in _NAMED_ON_HOSTS:
        return None
    if not _NAMED_ON_HOSTS[kind] and "/" in name:
        return "a file name with '/'"
    return layout.unsafe_reason(name)


def check_manifest_paths(manifest: Manifest, source: str) -> None:
    """Even a signed manifest may not name a path outside the bundle, nor outside the directories
    the install roles lay its files out in."""
    problems = [
        Problem(entry.path, f"unsafe path in manifest: {reason}")
        for entry in manifest.files
        if (reason := layout.unsafe_reason(entry.path)) is not None
        or entry.path in layout.TRUST_FILES
    ]
    problems += [
        Problem(entry.path, f"unsafe name in manifest: {entry.name!r}: {reason}")
        for entry in manifest.files
        if (reason := _unsafe_name(entry.kind, entry.name)) is not None
    ]
    problems += [
        Problem(f"components[{component.name!r}]", "unsafe model name in manifest")
        for component in manifest.components
        if component.kind == "model" and not NAME_RE.match(component.name)
    ]
    if problems:
        raise BundleLayoutError(
            f"{source}: the manifest names unsafe paths", hint=_HINT_LAYOUT, problems=problems
        )


def expected_sha256sums(manifest: Manifest, manifest_bytes: bytes) -> bytes:
    lines = {path: entry.sha256 for path, entry in manifest.shipped().items()}
    lines[layout.MANIFEST] = hashlib.sha256(manifest_bytes).hexdigest()
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(lines.items())).encode()


def verify_dir(
    bundle: Path,
    pubkey: Path,
    jobs: int = 2,
    progress: Progress | None = None,
    base: Path | None = None,
) -> VerifyReport:
    """Verify a bundle directory. A delta's files that it does not carry are checked in
    ``base`` (which must be the release the delta names) when given."""
    started = time.monotonic()
    progress = progress or NullProgress()
    if not bundle.is_dir():
        raise BundleLayoutError(
            f"{bundle} is not a directory", hint="pass a bundle directory or a packed .tar"
        )
    found = scan_layout(bundle)
    manifest = check_signature(bundle, pubkey)
    expected = manifest.by_path()
    base_dir = _check_base(manifest, base, pubkey) if base is not None else None

    extra = sorted(found - set(expected) - set(layout.TRUST_FILES))
    if extra:
        raise BundleLayoutError(
            f"{bundle}: unsafe layout: {_count(extra, 'file')} not in the signed manifest",
            hint=_HINT_LAYOUT,
            problems=[Problem(path, "not in the signed manifest") for path in extra],
        )
    # Where each file is checked: here, or (a delta's) in the base; or nowhere yet.
    located: list[tuple[Path, FileEntry]] = []
    problems: list[Problem] = []
    unchecked = 0
    for path, entry in sorted(expected.items()):
        if path in found:
            located.append((bundle, entry))
        elif entry.from_base and base_dir is not None:
            located.append((base_dir, entry))
        elif entry.from_base:
            unchecked += 1
        else:
            problems.append(Problem(path, "missing"))
    sums = bundle / layout.SHA256SUMS
    manifest_bytes = (bundle / layout.MANIFEST).read_bytes()
    if not sums.is_file() or sums.read_bytes() != expected_sha256sums(manifest, manifest_bytes):
        problems.append(Problem(layout.SHA256SUMS, "missing or does not match the manifest"))

    task = progress.task("verify", sum(entry.size for _, entry in located))

    def check(item: tuple[Path, FileEntry]) -> Problem | None:
        root, entry = item
        path = root / entry.path
        if not path.is_file():
            return Problem(entry.path, f"missing (the base {root} does not hold it)")
        if path.stat().st_size != entry.size:
            return Problem(entry.path, f"size {path.stat().st_size}, manifest says {entry.size}")
        digest, _ = sha256_file(path, task.advance)
        if digest != entry.sha256:
            return Problem(entry.path, f"sha256 {digest}, manifest says {entry.sha256}")
        return None

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="verify") as pool:
        problems += [p for p in pool.map(check, located) if p is not None]
    progress.finish(task)
    if problems:
        raise BundleCorruptError(
            f"{bundle}: corrupt content: {_count(problems, 'file')}",
            hint=_HINT_CORRUPT,
            problems=problems,
        )
    total = sum(entry.size for _, entry in located)
    return VerifyReport(manifest, len(located), total, time.monotonic() - started, unchecked)


def _check_base(manifest: Manifest, base: Path, pubkey: Path) -> Path:
    """``base`` must be the very bundle the delta names (its manifest digest), and signed."""
    if manifest.base is None:
        raise BundleLayoutError(
            f"--base was given but {manifest.name} {manifest.release} is not a delta",
            hint="verify it without --base",
        )
    check_signature(base, pubkey)
    digest = hashlib.sha256((base / layout.MANIFEST).read_bytes()).hexdigest()
    if digest != manifest.base.sha256:
        raise BundleCorruptError(
            f"{base} is not the base this delta needs: it needs {manifest.base.name} "
            f"{manifest.base.release} (manifest sha256 {manifest.base.sha256})",
            hint="pass the release directory of that exact bundle with --base",
        )
    return base


def _count(items: Sized, noun: str) -> str:
    if len(items) == 1:
        return f"1 {noun}"
    return f"{len(items)} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"
