"""Names inside a bundle, and the rules for what a bundle may hold.

One rule for which relative paths are safe (``unsafe_reason``), applied to tar headers,
manifest paths and the names that become paths on the hosts; one check of a manifest beyond its
signature (``check_manifest_paths``, which ``parse_manifest`` applies to every manifest it
loads); and the directory scan that refuses links and special files before anything is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sized
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from appliance.errors import BundleLayoutError, Problem
from appliance.names import CONTROL_RE, NAME_RE, RELEASE_RE

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

# Bounds for anything that becomes a path: far above what appliance writes, below PATH_MAX and
# NAME_MAX (bytes), so no host tool meets a name it cannot handle.
MAX_PATH = 1024
MAX_PATH_PART = 255
# Any text in a manifest: versions, URLs, names. Real ones are under 300 characters.
MAX_TEXT = 4096
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
    if (reason := text_problem(path, MAX_PATH)) is not None:
        return reason
    if any(len(part.encode()) > MAX_PATH_PART for part in path.split("/")):
        return f"a path component longer than {MAX_PATH_PART} bytes"
    parts = PurePosixPath(path).parts
    if ".." in path.split("/"):
        return "'..' in path"
    if str(PurePosixPath(*parts)) != path.removeprefix("./").rstrip("/"):
        return "path is not normalized"
    return None


def text_problem(text: str, limit: int = MAX_TEXT) -> str | None:
    """Why ``text`` may not stand in a manifest or a tar header: too long, or a control
    character in it."""
    if len(text) > limit:
        return f"longer than {limit} characters"
    control = CONTROL_RE.search(text)
    if control is not None:
        return f"control or format character U+{ord(control.group()):04X}"
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
    """A manifest well-formed beyond its signature: every path and every name that becomes a
    path (here or on the hosts) safe, no path listed twice, no control character anywhere.

    The one check of a manifest's content; ``parse_manifest`` applies it on every load, so no
    reader sees a manifest that fails it, signed or not.
    """
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
    problems += _duplicates(manifest)
    problems += _names_on_hosts(manifest)
    problems += [
        Problem(where, f"text in manifest: {reason}")
        for where, text in _texts(manifest.model_dump(mode="json"), "")
        if (reason := text_problem(text)) is not None
    ]
    if problems:
        raise BundleLayoutError(
            f"{source}: the manifest names unsafe paths", hint=HINT_LAYOUT, problems=problems
        )


def _duplicates(manifest: Manifest) -> list[Problem]:
    # Two models built from one file share its blob: the store holds it once and each model lists
    # it. That is the one repeat allowed: a content-addressed blob path, every entry naming the
    # same bytes. Any other repeat (a second sha256 for one path, a repo file twice) is ambiguous.
    seen: dict[str, tuple[str, int, bool]] = {}
    problems = []
    for entry in manifest.files:
        same = (entry.sha256, entry.size, entry.from_base)
        if entry.path in seen and (
            seen[entry.path] != same or entry.path != blob_path(entry.sha256)
        ):
            problems.append(Problem(entry.path, "listed twice in manifest"))
        seen.setdefault(entry.path, same)
    names = [c.name for c in manifest.components if c.kind == "model"]
    problems += [
        Problem(f"components[{name!r}]", "model listed twice in manifest")
        for index, name in enumerate(names)
        if name in names[:index]
    ]
    return problems


def _names_on_hosts(manifest: Manifest) -> list[Problem]:
    """The labels and names the installer and the roles turn into directories and files."""
    problems = []
    # The appliance's name only labels things (text_problem covers it); its release label names
    # the release directory, here and on every host.
    labels = {"release": manifest.release}
    if manifest.base is not None:
        labels["base.release"] = manifest.base.release
    # Releases install compares with the one under ``current``, a directory name too.
    labels |= {f"upgrades_from[{i}]": label for i, label in enumerate(manifest.upgrades_from)}
    problems += [
        Problem(where, f"unsafe release label in manifest: {label[:80]!r}")
        for where, label in labels.items()
        if not RELEASE_RE.match(label)
    ]
    if manifest.repo is not None:
        for field in ("path", "key"):
            if (reason := unsafe_reason(getattr(manifest.repo, field))) is not None:
                problems.append(Problem(f"repo.{field}", f"unsafe path in manifest: {reason}"))
    for entry in manifest.files:
        # A model's directory, a plain file's name, a wheel set's directory on the hosts.
        named = {"model": entry.component, "file": entry.component}.get(entry.kind)
        if entry.kind == "wheel":
            named = entry.component.rpartition(":")[2]
        if named is not None and not NAME_RE.match(named):
            problems.append(
                Problem(entry.path, f"unsafe component name in manifest: {entry.component!r}")
            )
    return problems


def _texts(value: object, where: str) -> list[tuple[str, str]]:
    """Every string in a manifest document (keys too), with where it is."""
    if isinstance(value, str):
        return [(where, value)]
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            found += _texts(str(key), inner) + _texts(item, inner)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _texts(item, f"{where}[{index}]")
    return found


def count(items: Sized, noun: str) -> str:
    if len(items) == 1:
        return f"1 {noun}"
    return f"{len(items)} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"
