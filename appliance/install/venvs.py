"""The installer venvs install.sh builds beside the releases, and the link that names one.

install.sh builds one venv per installer wheel set, ``<venvs>/<id>`` (the id: the first 16 hex
digits of the SHA-256 of the installer wheels' sorted ``<sha256>  <name>`` lines), and points
the link ``$APPLIANCE_VENV`` (default ``/opt/appliance/venv``) at the venv of the release
installed last; ``<venvs>`` is the link's sibling directory ``venvs``. The id follows from a
release's signed manifest alone, so the venv of any staged release is known without a record:
rollback points the link back at the venv of the release that runs again, and prune removes the
venvs no release left on the depot (and no running installer) uses.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry, parse_manifest
from appliance.errors import ApplianceError, InstallError

_ID_DIGITS = 16  # install.sh's `hexdigest()[:16]`


def installer_id(files: Iterable[FileEntry]) -> str | None:
    """install.sh's id of the venv for these manifest files (None: no installer wheels)."""
    wheels = [f for f in files if f.kind == "wheel" and f.component.endswith(":installer")]
    if not wheels:
        return None
    listing = "".join(sorted(f"{f.sha256}  {f.name}\n" for f in wheels))
    return hashlib.sha256(listing.encode()).hexdigest()[:_ID_DIGITS]


def venv_link(root: Path) -> Path:
    """install.sh's ``$APPLIANCE_VENV`` (it exports it to the installer it runs), else the
    default beside ``root`` (``/opt/appliance/venv`` for the default root)."""
    given = os.environ.get("APPLIANCE_VENV")
    return Path(given) if given else root / "venv"


def venvs_dir(root: Path) -> Path:
    return venv_link(root).parent / "venvs"


def release_venv(root: Path, release: str) -> Path | None:
    """Where the installer venv of the staged ``release`` is (built or not); None when its
    manifest cannot be read or carries no installer wheels."""
    path = root / "releases" / release / layout.MANIFEST
    try:
        manifest = parse_manifest(path.read_bytes(), str(path))
    except (OSError, ApplianceError):
        return None
    venv_id = installer_id(manifest.files)
    return None if venv_id is None else venvs_dir(root) / venv_id


def point_venv(root: Path, release: str) -> str | None:
    """Point the venv link at ``release``'s installer venv (after a rollback: the ``appliance``
    command is the installer of the release that runs); returns why it stayed, if it did."""
    link = venv_link(root)
    if not link.is_symlink():
        # No link: appliance was not installed by install.sh here, and there is none to move.
        return (
            f"{link} is not a link (an older install.sh made it): left as it is"
            if (link.exists())
            else None
        )
    venv = release_venv(root, release)
    if venv is None or not (venv / ".complete").is_file():
        return (
            f"{link} still names the installer it named: release {release}'s installer venv "
            f"is not on this machine (run release {release}'s install.sh to build it)"
        )
    wanted = Path(venv.parent.name) / venv.name
    if link.readlink() == wanted:
        return None
    temporary = link.with_name(f".{link.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(wanted)
    temporary.replace(link)  # one rename: the link always names a complete venv
    return None


def in_use(root: Path, releases: Iterable[str]) -> set[str]:
    """The venv ids no prune may take: the kept releases', the link's, the running one's."""
    ids = {venv.name for r in releases if (venv := release_venv(root, r)) is not None}
    link = venv_link(root)
    if link.is_symlink():
        ids.add(link.readlink().name)
    running = Path(sys.prefix).resolve()
    if running.parent == venvs_dir(root).resolve():
        ids.add(running.name)
    return ids


@contextmanager
def venvs_lock(root: Path) -> Iterator[None]:
    """install.sh's lock on the venvs (it holds it from building its venv to its end): a venv
    is removed only while no install.sh builds or runs one."""
    directory = venvs_dir(root)
    if not directory.is_dir():
        yield
        return
    handle = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for attempt in range(20):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    raise InstallError(
                        f"an install.sh run holds {directory}/.lock (it builds or runs an "
                        "installer venv)",
                        hint="wait for it to finish, then prune again; nothing was removed",
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(handle)


def remove_tree(path: Path, scratch: Path) -> None:
    """Move ``path`` aside by one rename, then delete it: nothing half removed keeps its name."""
    if not path.exists() and not path.is_symlink():
        return
    doomed = Path(tempfile.mkdtemp(prefix=".prune-", dir=scratch))
    path.rename(doomed / path.name)
    shutil.rmtree(doomed)


def freed_bytes(trees: Iterable[Path]) -> int:
    """The disk space removing ``trees`` frees: each file's blocks once, and only for files
    with no hard link outside them (a delta release shares files with its base)."""
    seen: dict[tuple[int, int], int] = {}  # inode: names found in ``trees``
    sizes: dict[tuple[int, int], tuple[int, int]] = {}  # inode: (bytes on disk, link count)
    for tree in trees:
        if not tree.exists():
            continue
        for walked, _dirs, names in os.walk(tree):
            directory = Path(walked)
            for path in [directory, *(directory / n for n in names)]:
                stat = path.lstat()
                inode = (stat.st_dev, stat.st_ino)
                seen[inode] = seen.get(inode, 0) + 1
                # A directory's link count counts its subdirectories, not other names.
                count = 1 if path == directory else stat.st_nlink
                sizes[inode] = (stat.st_blocks * 512, count)
    return sum(size for inode, (size, count) in sizes.items() if seen[inode] >= count)
