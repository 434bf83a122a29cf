"""Stage a verified bundle as a release: ``<root>/releases/<release>``, immutable once there.

A release directory is the installer's own: every file in it is a copy made while it was hashed
(``VerifiedBundle.extract``), or a hard link into another release this installer staged, never a
link into a directory someone else can still change. It appears by one rename, complete.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path

from appliance.bundle import layout
from appliance.bundle.manifest import BaseRef, Manifest
from appliance.bundle.verify import InstalledBase, VerifiedBundle
from appliance.errors import InstallError
from appliance.progress import Progress


def stage(bundle: VerifiedBundle, root: Path, progress: Progress | None = None) -> Path:
    """Make ``bundle`` the release ``<root>/releases/<release>``; returns that directory.

    The same signed bundle staged before is reused as it is (nothing is read); another bundle
    with the same release label is refused. A delta becomes a complete release: its own files
    copied, the rest linked from its base release, which must be on this machine. Files the
    running release (``current``) holds with the same path and sha256 are linked from it.
    """
    releases = root / "releases"
    release_dir = releases / bundle.manifest.release
    if release_dir.exists():
        if _manifest_bytes(release_dir) == bundle.trust[layout.MANIFEST]:
            return release_dir
        raise InstallError(
            f"{release_dir} holds another bundle of release {bundle.manifest.release}",
            hint="releases are immutable: build the new bundle with a new release label",
        )
    root.mkdir(parents=True, exist_ok=True)
    _check_room(bundle, root)
    # Copied beside releases/, so that releases/ only ever holds complete releases.
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        # The running release's files of the same digest are linked, not copied again.
        previous = (root / "current").resolve() if (root / "current").is_symlink() else None
        bundle.extract(
            incoming / "release",
            installed_base=_base_release(releases),
            previous=previous if previous and previous.parent == releases.resolve() else None,
            progress=progress,
        )
        releases.mkdir(exist_ok=True)
        (incoming / "release").rename(release_dir)
    finally:
        shutil.rmtree(incoming)
    return release_dir


def _check_room(bundle: VerifiedBundle, root: Path) -> None:
    """Staging copies what the bundle carries (a delta's other files are linked): refuse before
    the first byte rather than fill the disk half way (preflight checks the rest later)."""
    needed = sum(e.size for e in bundle.manifest.files if not e.from_base)
    free = shutil.disk_usage(root).free
    if needed > free:
        raise InstallError(
            f"{root} has {free / 2**30:.2f} GiB free; staging release "
            f"{bundle.manifest.release} needs {needed / 2**30:.2f} GiB",
            hint="free space there, or install with --root on a larger filesystem; nothing was "
            "changed",
        )


def _base_release(releases: Path) -> InstalledBase:
    """Where a delta's base is on this machine: the release it names, staged here before."""

    def find(wanted: BaseRef) -> Path:
        candidate = releases / wanted.release
        if hashlib.sha256(_manifest_bytes(candidate)).hexdigest() == wanted.sha256:
            return candidate
        held = sorted(
            p.name for p in releases.glob("*") if p.is_dir() and not p.name.startswith(".")
        )
        raise InstallError(
            f"this delta bundle needs release {wanted.release} of {wanted.name} (manifest sha256 "
            f"{wanted.sha256[:16]}...) on this depot; it holds: {', '.join(held) or 'no release'}",
            hint="install that release first, or ask for a full bundle; nothing was changed",
        )

    return find


def _manifest_bytes(release_dir: Path) -> bytes:
    try:
        return (release_dir / layout.MANIFEST).read_bytes()
    except FileNotFoundError:
        return b""


def ansible_content(release_dir: Path, manifest: Manifest) -> Path:
    """Unpack the release's Ansible content next to it, once (it is verified content)."""
    target = release_dir.parent / f"{release_dir.name}.ansible"
    if target.is_dir():
        return target
    (entry,) = [e for e in manifest.files if e.kind == "ansible-content"]
    partial = Path(tempfile.mkdtemp(prefix=".ansible-", dir=release_dir.parent))
    try:
        # By hand, not extractall: Debian 12's Python 3.11.2 predates extraction filters, and
        # only plain files with safe names may come out of this tar.
        with tarfile.open(release_dir / entry.path) as tar:
            for member in tar.getmembers():
                source = tar.extractfile(member) if member.isfile() else None
                if source is None or layout.unsafe_reason(member.name):
                    raise InstallError(f"ansible content member {member.name!r} is not a file")
                path = partial / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                with source, path.open("wb") as out:
                    shutil.copyfileobj(source, out)
                path.chmod(0o755 if member.mode & 0o111 else 0o644)
        partial.chmod(0o755)
        partial.rename(target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return target
