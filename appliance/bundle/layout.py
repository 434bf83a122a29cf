"""Names inside a bundle, and the rules for what a bundle may hold.

One rule for which relative paths are safe (``unsafe_reason``), applied to tar headers,
manifest paths and the names that become paths on the hosts; and the directory scan that
refuses links and special files before anything is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sized
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from appliance.errors import BundleLayoutError, Problem
from appliance.names import NAME_RE

if TYPE_CHECKING:
    from appliance.bundle.manifest import Manifest

BLOBS = "blobs/sha256"
MANIFEST = "manifest.json"
MANIFEST_SIG = "manifest.json.sig"
SHA256SUMS = "SHA256SUMS"
SHA256SUMS_SIG = "SHA256SUMS.sig"
SBOM = "sbom.cdx.json"
INSTALL_SH = "install.sh"
REPO = "repo"

# Signed over, not listed in the manifest: the manifest cannot list its own digest.
TRUST_FILES = (MANIFEST, MANIFEST_SIG, SHA256SUMS, SHA256SUMS_SIG)
# Sent first in a packed bundle, so a reader can check the signature before any payload.
PACK_FIRST = (MANIFEST, MANIFEST_SIG, SHA256SUMS, SHA256SUMS_SIG)
# A manifest (or signature, or SHA256SUMS) larger than this is refused before it is read whole.
TRUST_FILE_LIMIT = 64 << 20

HINT_LAYOUT = (
    "a bundle holds only the files its signed manifest lists; do not install it, and ask the "
    "publisher for a fresh copy"
)


def blob_path(hexdigest: str) -> str:
    return f"{BLOBS}/{hexdigest}"


def file_mode(path: str) -> int:
    """The mode a bundle file gets when appliance writes it: install.sh runs, nothing else."""
    return 0o755 if path == INSTALL_SH else 0o644


def unsafe_reason(path: str) -> str | None:
    """Why ``path`` (as written in a manifest or tar header) may not appear in a bundle."""
    if not path or path in {".", "./"}:
        return "empty path"
    if "\\" in path or "\x00" in path:
        return "backslash or NUL in path"
    if path.startswith("/"):
        return "absolute path"
    parts = PurePosixPath(path).parts
    if ".." in path.split("/"):
        return "'..' in path"
    if str(PurePosixPath(*parts)) != path.removeprefix("./").rstrip("/"):
        return "path is not normalized"
    return None


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
                if stat.S_ISDIR(mode):
                    stack.append(path)
                elif stat.S_ISREG(mode):
                    found.add(relative)
                else:
                    problems.append(Problem(relative, _not_regular(bundle, path, mode)))
    if problems:
        raise BundleLayoutError(
            f"{bundle}: unsafe layout: {count(problems, 'entry')}",
            hint=HINT_LAYOUT,
            problems=sorted(problems, key=lambda p: p.path),
        )
    return found


def _not_regular(bundle: Path, path: Path, mode: int) -> str:
    if stat.S_ISLNK(mode):
        target = str(path.readlink())
        escapes = not (path.parent / target).resolve().is_relative_to(bundle.resolve())
        return f"symbolic link to {target}" + (
            " escapes the bundle" if escapes else "; bundles hold no links"
        )
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file (bundles hold regular files only)"
    return "special file (bundles hold regular files only)"


# Kinds whose ``name`` becomes a path on the hosts (models: relative inside the model's
# directory; the others: a file name in a directory of their own).
_NAMED_ON_HOSTS = {"model": True, "wheel": False, "file": False, "deb": False}


def _unsafe_name(kind: str, name: str | None) -> str | None:
    if name is None or kind not in _NAMED_ON_HOSTS:
        return None
    if not _NAMED_ON_HOSTS[kind] and "/" in name:
        return "a file name with '/'"
    return unsafe_reason(name)


def _unsafe_entry_path(path: str) -> str | None:
    if path in TRUST_FILES:
        return "the name of a trust file, which the manifest cannot list"
    return unsafe_reason(path)


def check_manifest_paths(manifest: Manifest, source: str) -> None:
    """Even a signed manifest may not name a path outside the bundle, nor outside the directories
    the install roles lay its files out in."""
    problems = [
        Problem(entry.path, f"unsafe path in manifest: {reason}")
        for entry in manifest.files
        if (reason := _unsafe_entry_path(entry.path)) is not None
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
            f"{source}: the manifest names unsafe paths", hint=HINT_LAYOUT, problems=problems
        )


def count(items: Sized, noun: str) -> str:
    if len(items) == 1:
        return f"1 {noun}"
    return f"{len(items)} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"
